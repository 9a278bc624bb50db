/** The bounded cache behind the IMAP structure cache. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Lru } from '../src/imap/lru.js';

describe('Lru', () => {
  it('never holds more than its limit and keeps what was used recently', () => {
    const lru = new Lru<number, string>(10);
    for (let i = 0; i < 1000; i++) {
      lru.set(i, `v${i}`);
      assert.ok(lru.size <= 10, `size ${lru.size} after ${i + 1} sets`);
      // entry 0 is read after every insert: it must survive all the churn
      assert.equal(lru.get(0), 'v0', `entry 0 lost after ${i + 1} sets`);
    }
    // the most recent entries are there, old unread ones are gone
    assert.equal(lru.get(999), 'v999');
    assert.equal(lru.get(998), 'v998');
    assert.equal(lru.get(500), undefined);
  });

  it('set replaces a value without growing; clear empties it', () => {
    const lru = new Lru<string, number>(4);
    lru.set('a', 1);
    lru.set('a', 2);
    assert.equal(lru.size, 1);
    assert.equal(lru.get('a'), 2);
    for (const k of ['b', 'c', 'd']) lru.set(k, 0);
    // 'a' now sits in the old generation: replacing it must not leave two copies
    lru.set('a', 3);
    assert.equal(lru.get('a'), 3);
    assert.ok(lru.size <= 4);
    lru.clear();
    assert.equal(lru.size, 0);
    assert.equal(lru.get('a'), undefined);
  });
});
