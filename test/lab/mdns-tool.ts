/**
 * A device on the lab's LAN speaking mDNS, run inside a lab namespace
 * (`nsenter --net=... node test/lab/mdns-tool.ts ...`) by test/lab/names.test.ts:
 *
 *   query NAME IFACE_ADDR       asks for NAME (type A) from port 5353 as a phone would;
 *                               prints the A records heard for it within 1.5 s, as JSON lines
 *   oneshot NAME IFACE_ADDR     the same as a one-shot resolver (dig, nslookup): from another
 *                               port, expecting unicast answers with its id (RFC 6762 6.7)
 *   claim NAME ADDR IFACE_ADDR  another device holding NAME at ADDR: announces it, answers for
 *                               it, prints "ready", runs until killed
 *
 * Joined and sent on the interface of IFACE_ADDR only: the node's link to the lab's switch.
 */
import makeMdns from 'multicast-dns'
import dgram from 'node:dgram'
import dnsPacket from 'dns-packet'

const [mode, name = '', a1 = '', a2 = ''] = process.argv.slice(2)

if (mode === 'query') {
  const mdns = makeMdns({ interface: a1, bind: '0.0.0.0' })
  mdns.on('response', (r, rinfo) => {
    for (const a of r.answers ?? []) if (a.name.toLowerCase() === name.toLowerCase() && a.type === 'A') process.stdout.write(JSON.stringify({ from: rinfo.address, address: a.data, ttl: a.ttl }) + '\n')
  })
  mdns.on('ready', () => { mdns.query([{ name, type: 'A' }]) })
  setTimeout(() => { mdns.destroy() }, 1500)
} else if (mode === 'oneshot') {
  const socket = dgram.createSocket('udp4')
  socket.on('message', (msg, rinfo) => {
    try {
      const p = dnsPacket.decode(msg)
      for (const a of p.answers ?? []) if (a.type === 'A') process.stdout.write(JSON.stringify({ from: rinfo.address, port: rinfo.port, id: p.id, address: a.data, ttl: a.ttl }) + '\n')
    } catch {}
  })
  socket.bind(0, () => {
    socket.setMulticastInterface(a1)
    socket.send(dnsPacket.encode({ type: 'query', id: 4711, questions: [{ name, type: 'A' }] }), 5353, '224.0.0.251')
  })
  setTimeout(() => { socket.close() }, 1500)
} else if (mode === 'claim') {
  const mdns = makeMdns({ interface: a2, bind: '0.0.0.0' })
  const record = { name, type: 'A' as const, ttl: 120, data: a1 }
  mdns.on('query', (q) => {
    if ((q.questions ?? []).some(x => x.name.toLowerCase() === name.toLowerCase())) mdns.respond({ answers: [record] })
  })
  mdns.on('ready', () => { mdns.respond({ answers: [record] }); process.stdout.write('ready\n') })
} else {
  process.stderr.write('usage: mdns-tool.ts query NAME IFACE_ADDR | oneshot NAME IFACE_ADDR | claim NAME ADDR IFACE_ADDR\n')
  process.exitCode = 64
}
