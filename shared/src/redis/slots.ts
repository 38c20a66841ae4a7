/**
 * Redis Cluster hash slots (CRC16-XMODEM of the key, or of its `{hash tag}`,
 * modulo 16384), as Redis and ioredis compute them. Used to check that every
 * script and transaction stays within one slot.
 */

const TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ b) & 0xff]!;
  return crc;
}

/** The part of a key that is hashed: the first `{…}` with something inside, else the whole key. */
export function hashTagOf(key: string): string {
  const open = key.indexOf('{');
  if (open === -1) return key;
  const close = key.indexOf('}', open + 1);
  if (close === -1 || close === open + 1) return key;
  return key.slice(open + 1, close);
}

/** The cluster slot of a key (0..16383). */
export function keySlot(key: string): number {
  return crc16(Buffer.from(hashTagOf(key), 'utf8')) % 16384;
}

/** The one slot all `keys` share; throws naming the keys when they do not share one. */
export function singleSlot(keys: readonly string[], what: string): number | null {
  if (keys.length === 0) return null;
  const slot = keySlot(keys[0]!);
  for (const k of keys) {
    if (keySlot(k) !== slot) {
      throw new CrossSlotError(`${what}: keys in different cluster slots: ${keys.map((x) => `${x} (${keySlot(x)})`).join(', ')}`);
    }
  }
  return slot;
}

export class CrossSlotError extends Error {
  override name = 'CrossSlotError';
}
