/**
 * @peculiar/x509 2.x registers its algorithms with tsyringe, which refuses to load unless a
 * Reflect metadata API (reflect-metadata, core-js, ...) is installed first. None of those is a
 * dependency of ours, so this installs the four functions tsyringe and tslib's __metadata use,
 * and only when nothing else has installed them. Metadata lives in a WeakMap per target.
 * (If the project ever depends on `reflect-metadata`, import that instead and delete this.)
 */
type Key = unknown;
type Prop = string | symbol | undefined;

const metadata = new WeakMap<object, Map<Prop, Map<Key, unknown>>>();

function table(target: object, prop: Prop, create: boolean): Map<Key, unknown> | undefined {
  let byProp = metadata.get(target);
  if (!byProp) {
    if (!create) return undefined;
    byProp = new Map();
    metadata.set(target, byProp);
  }
  let byKey = byProp.get(prop);
  if (!byKey) {
    if (!create) return undefined;
    byKey = new Map();
    byProp.set(prop, byKey);
  }
  return byKey;
}

export function installReflectMetadataShim(): void {
  const R = Reflect as unknown as Record<string, unknown>;
  if (typeof R.getMetadata === 'function') return;

  const defineMetadata = (key: Key, value: unknown, target: object, prop?: Prop) => {
    table(target, prop, true)!.set(key, value);
  };
  const getOwnMetadata = (key: Key, target: object, prop?: Prop) => table(target, prop, false)?.get(key);
  const getMetadata = (key: Key, target: object, prop?: Prop) => {
    for (let o: object | null = target; o; o = Object.getPrototypeOf(o) as object | null) {
      const t = table(o, prop, false);
      if (t?.has(key)) return t.get(key);
    }
    return undefined;
  };
  const metadataDecorator = (key: Key, value: unknown) => (target: object, prop?: Prop) => defineMetadata(key, value, target, prop);

  Object.assign(R, { defineMetadata, getOwnMetadata, getMetadata, metadata: metadataDecorator });
}
