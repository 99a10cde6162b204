// The agent loads only the systeminformation module it uses (a few MB less
// resident memory than the whole library); these are its typings.
declare module 'systeminformation/lib/memory.js' {
  const memory: { mem: () => Promise<{ total: number, available: number }> }
  export default memory
}
