// The agent loads only the two systeminformation modules it uses (about 3 MB
// less resident memory than the whole library); these are their typings.
declare module 'systeminformation/lib/cpu.js' {
  const cpu: { currentLoad: () => Promise<{ currentLoad: number }> }
  export default cpu
}
declare module 'systeminformation/lib/memory.js' {
  const memory: { mem: () => Promise<{ total: number, available: number }> }
  export default memory
}
