/**
 * A bounded cache that keeps recently used entries (an approximate LRU with two
 * generations): new and recently read entries live in the young map; when it is full it
 * becomes the old map and the previous old map is dropped. A hit in the young map costs one
 * Map lookup (a strict LRU re-inserts on every hit, which dominated header SEARCH over
 * thousands of messages); a hit in the old map moves the entry to the young one.
 * Holds at most `maxEntries` entries.
 */
export class Lru<K, V> {
  private young = new Map<K, V>();
  private old = new Map<K, V>();
  private readonly generation: number;

  constructor(maxEntries: number) {
    this.generation = Math.max(1, Math.floor(maxEntries / 2));
  }

  get(key: K): V | undefined {
    const value = this.young.get(key);
    if (value !== undefined) return value;
    const aged = this.old.get(key);
    if (aged !== undefined) {
      this.old.delete(key);
      this.put(key, aged);
    }
    return aged;
  }

  set(key: K, value: V): void {
    this.old.delete(key);
    if (this.young.has(key)) this.young.set(key, value);
    else this.put(key, value);
  }

  get size(): number {
    return this.young.size + this.old.size;
  }

  clear(): void {
    this.young.clear();
    this.old.clear();
  }

  private put(key: K, value: V): void {
    if (this.young.size >= this.generation) {
      this.old = this.young;
      this.young = new Map();
    }
    this.young.set(key, value);
  }
}
