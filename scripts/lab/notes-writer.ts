/**
 * Runs notes writers (scripts/lab/notes-client.ts) where the app can be reached:
 * inside a lab node's namespace, through `dcloud lab exec NODE -- node ...`.
 *
 *   node scripts/lab/notes-writer.ts write (--app NAME --lab LAB | --url https://ADDRESS/ --host NAME.DOMAIN) --clients A,B,... [--interval MS] [--timeout MS]
 *   node scripts/lab/notes-writer.ts read (--app NAME --lab LAB | --url https://ADDRESS/ --host NAME.DOMAIN) [--wait MS]
 *
 * `write` prints one JSON line per acknowledged record, {"t":"ack","c":CLIENT,"s":SEQ,"at":MS,"u":URL}
 * (the line itself follows from CLIENT and SEQ; AT is when the 201 came, URL the app's address that gave it), {"t":"url","url":…} whenever the app's
 * address changes, and at the end one {"t":"done",…} per client with its
 * counts. It stops when its stdin closes (or on SIGTERM/SIGINT). `read`
 * prints the log, retrying until the app answers or MS pass (default 30000).
 *
 * The app is reached at its name through a front door (its web port is not
 * published on any node), trusting only the cluster's root, asked of the
 * node's agent (DCLOUD_API, which `lab exec` sets). --app follows the app
 * through that agent: the front door of the node running it (its address from
 * the lab's state), so that an acknowledgement says which copy gave it, as a
 * chaos run needs. --url pins one front door (https://ADDRESS/), asked for
 * --host.
 */
import { parseArgs } from 'node:util'
import { apiText } from '../../agent/cli/client.ts'
import { NotesWriter, frontDoorFetch, readNotes, runningFrontDoor } from './notes-client.ts'

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    app: { type: 'string' },
    lab: { type: 'string' },
    url: { type: 'string' },
    host: { type: 'string' },
    clients: { type: 'string' },
    interval: { type: 'string' },
    timeout: { type: 'string' },
    wait: { type: 'string' }
  }
})
const mode = positionals[0]
if ((mode !== 'write' && mode !== 'read') || (values.app === undefined) === (values.url === undefined) || (values.app !== undefined && values.lab === undefined) || (values.url !== undefined && values.host === undefined)) {
  process.stderr.write('usage: notes-writer.ts write|read (--app NAME --lab LAB | --url https://ADDRESS/ --host NAME.DOMAIN) [--clients A,B] [--interval MS] [--timeout MS] [--wait MS]\n')
  process.exit(64)
}

/** The app's host (NAME.DOMAIN), as given or as the agent names it; the front door is asked for it. */
let host = values.host ?? ''
const fetchImpl = frontDoorFetch(() => host, await apiText('/v1/ca.pem', undefined, 10_000))

function emit (msg: object): void {
  process.stdout.write(`${JSON.stringify(msg)}\n`)
}

/** The front door of the node running the app, or null while it runs nowhere. */
async function lookup (app: string): Promise<string | null> {
  const found = await runningFrontDoor(values.lab as string, app)
  if (found !== null) host = found.host
  return found?.url ?? null
}

/** Exits once stdout is written out: a pipe is asynchronous, and process.exit would cut it short. */
function exitAfterOutput (code: number): void {
  process.stdout.write('', () => process.exit(code))
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Prints the log, retrying while the app has no endpoint or does not answer (it may be restarting). */
async function read (waitMs: number): Promise<void> {
  const deadline = performance.now() + waitMs
  for (;;) {
    let problem: string
    try {
      const url = values.url ?? await lookup(values.app as string)
      if (url !== null) {
        process.stdout.write(await readNotes(url, { fetchImpl }))
        exitAfterOutput(0)
        return
      }
      problem = `app ${values.app ?? ''} runs nowhere`
    } catch (err) {
      problem = String(err)
    }
    if (performance.now() > deadline) {
      process.stderr.write(`notes-writer: ${problem}\n`)
      process.exit(1)
    }
    await sleep(200)
  }
}

async function write (): Promise<void> {
  let current: string | null = values.url ?? null
  if (values.app !== undefined) {
    // The first writes should not fail only because the address was not looked up yet.
    current = await lookup(values.app).catch(() => null)
  }
  if (current !== null) emit({ t: 'url', url: current })
  let following = values.app !== undefined
  const follow = (async () => {
    // Polled rather than looked up per write: a write must not wait on the agent.
    while (following) {
      await sleep(250)
      const next = await lookup(values.app as string).catch(() => current)
      if (next !== current) {
        current = next
        if (next !== null) emit({ t: 'url', url: next })
      }
    }
  })()

  const clients = (values.clients ?? 'w1').split(',').filter(c => c !== '')
  const writers = clients.map(clientId => new NotesWriter({
    url: () => current,
    clientId,
    intervalMs: values.interval !== undefined ? Number(values.interval) : undefined,
    timeoutMs: values.timeout !== undefined ? Number(values.timeout) : undefined,
    fetchImpl,
    // `at`: when the 201 arrived (the lab's one clock), to compare with containers' start and finish times;
    // `u`: the app's address that answered, so a chaos run tells which copy acknowledged it.
    onAck: (r, url) => { emit({ t: 'ack', c: clientId, s: r.seq, at: Date.now(), u: url }) }
  }))
  for (const w of writers) w.start()

  let stopping = false
  const stop = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    await Promise.all(writers.map(async w => { await w.stop() }))
    following = false
    await follow
    writers.forEach((w, i) => { emit({ t: 'done', clientId: clients[i], ...w.counts(), longestGapMs: Math.round(w.longestGapMs()), errors: w.errors() }) })
    exitAfterOutput(0)
  }
  process.stdin.on('end', () => { void stop() })
  process.stdin.on('close', () => { void stop() })
  process.stdin.resume()
  process.on('SIGTERM', () => { void stop() })
  process.on('SIGINT', () => { void stop() })
}

if (mode === 'read') await read(Number(values.wait ?? 30_000))
else await write()
