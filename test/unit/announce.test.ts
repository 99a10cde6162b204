import { describe, expect, it } from 'vitest'
import { multiaddr } from '@multiformats/multiaddr'
import type { NetworkInterfaceInfo } from 'node:os'
import { announceable } from '../../agent/mesh/mesh.ts'

const iface = (address: string): NetworkInterfaceInfo => ({ address, netmask: '255.255.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: false, cidr: null })

describe('announced addresses', () => {
  const interfaces = { lo: [iface('127.0.0.1')], eth0: [iface('192.168.1.20')], docker0: [iface('172.17.0.1')], 'br-0a1b2c3d4e5f': [iface('172.18.0.1')] }
  const addrs = ['/ip4/127.0.0.1/tcp/7370', '/ip4/192.168.1.20/tcp/7370', '/ip4/172.17.0.1/tcp/7370', '/ip4/172.18.0.1/tcp/7370'].map(a => multiaddr(a))

  it('leaves out Docker bridges and loopback', () => {
    expect(announceable(addrs, interfaces).map(String)).toEqual(['/ip4/192.168.1.20/tcp/7370'])
  })

  it('keeps loopback when there is nothing else', () => {
    expect(announceable([multiaddr('/ip4/127.0.0.1/tcp/7370')], { lo: [iface('127.0.0.1')] }).map(String)).toEqual(['/ip4/127.0.0.1/tcp/7370'])
  })
})
