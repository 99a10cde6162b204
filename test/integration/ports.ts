/** A TCP port free on loopback right now, for a server a test starts (Caddy, Pebble). */
import { createServer, type AddressInfo } from 'node:net'

export async function freePort (): Promise<number> {
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as AddressInfo).port
  await new Promise(resolve => s.close(resolve))
  return port
}
