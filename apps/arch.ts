/** Docker's architecture names, and the other names people and kernels use for them. */

/** Docker architecture names, as images and nodes report them. */
export const ARCHITECTURES = ['amd64', 'arm64', 'arm', '386', 'ppc64le', 's390x', 'riscv64'] as const

/** "linux/arm/v7", "arm/v7", "aarch64", "x86_64" → Docker's architecture name, or null. */
export function normaliseArch (text: string): string | null {
  const a = text.trim().toLowerCase().replace(/^linux\//, '').split('/')[0] ?? ''
  const aliases: Record<string, string> = { x86_64: 'amd64', x64: 'amd64', aarch64: 'arm64', armhf: 'arm', armv7: 'arm', armv7l: 'arm', armv6: 'arm', i386: '386', ia32: '386', ppc64el: 'ppc64le' }
  const name = aliases[a] ?? a
  return (ARCHITECTURES as readonly string[]).includes(name) ? name : null
}
