/**
 * Who the client is, for rate limiting: the peer address, or — only when the peer is one of
 * `TRUSTED_PROXIES` — the address the proxies recorded in `X-Forwarded-For`. A header from
 * anyone else is ignored: any client can write one.
 *
 * IPv6 clients are identified by their /64 prefix. One host is routinely given a whole /64
 * (SLAAC, privacy addresses), so counting addresses one by one would let a single machine appear
 * as 2^64 clients, each with a fresh token bucket.
 */
import { BlockList, isIP } from 'node:net';

/** An IP address or CIDR, parsed; undefined when it is neither. */
export function parseCidr(
  text: string,
): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [rawAddress = '', rawPrefix, ...rest] = text.trim().split('/');
  if (rest.length > 0) return undefined;
  const address = unmapIpv4(rawAddress);
  const version = isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = rawPrefix === undefined ? max : Number(rawPrefix);
  if (rawPrefix !== undefined && !/^\d{1,3}$/.test(rawPrefix)) return undefined;
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** `::ffff:192.0.2.1` (an IPv4 peer on a dual-stack socket) as `192.0.2.1`. */
function unmapIpv4(address: string): string {
  const match = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  return match?.[1] ?? address;
}

/** The eight 16-bit groups of an IPv6 address (embedded IPv4 allowed), or undefined. */
function ipv6Groups(address: string): number[] | undefined {
  if (isIP(address) !== 6) return undefined;
  let text = address.toLowerCase();
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  const v4 = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const parse = (part: string): number[] =>
    part === '' ? [] : part.split(':').map((group) => Number.parseInt(group, 16));
  const front = parse(head);
  const back = tail === undefined ? [] : parse(tail);
  const fill = tail === undefined ? 0 : 8 - front.length - back.length;
  const groups = [...front, ...new Array<number>(fill).fill(0), ...back];
  return groups.length === 8 ? groups : undefined;
}

/**
 * The rate limiter's key for an address: an IPv4 address as it is, an IPv6 address as its /64
 * prefix (`2001:db8:1:2::/64`); anything unparseable as it is.
 */
export function clientKey(address: string): string {
  const plain = unmapIpv4(address);
  if (isIP(plain) !== 6) return plain;
  const groups = ipv6Groups(plain);
  if (groups === undefined) return plain;
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`;
}

/** Decides which address a request comes from. */
export class ClientAddressResolver {
  private readonly proxies = new BlockList();
  private readonly anyProxy: boolean;

  /** `trustedProxies`: IP addresses or CIDRs (validated by the config). */
  constructor(trustedProxies: readonly string[]) {
    for (const entry of trustedProxies) {
      const cidr = parseCidr(entry);
      if (cidr !== undefined) this.proxies.addSubnet(cidr.address, cidr.prefix, cidr.family);
    }
    this.anyProxy = trustedProxies.length > 0;
  }

  private trusted(address: string): boolean {
    const plain = unmapIpv4(address);
    const version = isIP(plain);
    return version !== 0 && this.proxies.check(plain, version === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
   * `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it were written
   * by whoever the untrusted hop was, and prove nothing). A malformed entry ends the walk at the
   * last trusted hop seen.
   */
  resolve(peer: string, forwardedFor: string | undefined): string {
    if (!this.anyProxy || forwardedFor === undefined || !this.trusted(peer)) return peer;
    const hops = forwardedFor.split(',');
    let client = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = unmapIpv4((hops[i] ?? '').trim());
      if (isIP(hop) === 0) break;
      client = hop;
      if (!this.trusted(hop)) break;
    }
    return client;
  }
}
