// docker-modem can reach engines over SSH through the ssh2 package, whose native
// addons do not belong in the agent: the agent only ever talks to its own
// engine through the local socket. The bundle maps ssh2 to this module.
export class Client {
  constructor () {
    throw new Error('Docker over SSH is not supported by the dcloud agent; use the local socket')
  }
}
export default { Client }
