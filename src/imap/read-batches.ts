/** Splitting message lists into read-ahead batches (FETCH and SEARCH read message files this way). */
import type { MessageMeta } from '../store/types.js';

/** Messages are read this many at a time, up to READ_BATCH_BYTES together. */
export const READ_BATCH_COUNT = 16;
export const READ_BATCH_BYTES = 4 * 1024 * 1024;

/** Consecutive batches of at most `maxCount` messages and `maxBytes` (a bigger message goes alone). */
export function* readBatches(metas: MessageMeta[], maxCount = READ_BATCH_COUNT, maxBytes = READ_BATCH_BYTES): Generator<MessageMeta[]> {
  let batch: MessageMeta[] = [];
  let bytes = 0;
  for (const meta of metas) {
    if (batch.length && (batch.length >= maxCount || bytes + meta.size > maxBytes)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(meta);
    bytes += meta.size;
  }
  if (batch.length) yield batch;
}
