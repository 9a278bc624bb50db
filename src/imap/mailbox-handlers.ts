/** Handlers for mailbox-level commands: LIST/LSUB, (UN)SUBSCRIBE, CREATE, RENAME, DELETE,
 * SELECT/EXAMINE, STATUS, GETQUOTAROOT/GETQUOTA. */
import type { ImapHandlers, ImapSession, ListedFolder, QuotaResult } from './imap-core-types.js';
import { mailboxName, respond, userOf, watchSelected, type HandlerContext } from './handler-context.js';

/** Reported as the STORAGE limit when a user has no quota (IMAP QUOTA has no "unlimited"). */
export const UNLIMITED_QUOTA_BYTES = 2 ** 50;

type MailboxHandlers = Required<
  Pick<
    ImapHandlers,
    | 'onList'
    | 'onLsub'
    | 'onSubscribe'
    | 'onUnsubscribe'
    | 'onCreate'
    | 'onRename'
    | 'onDelete'
    | 'onOpen'
    | 'onStatus'
    | 'onGetQuotaRoot'
    | 'onGetQuota'
  >
>;

export function createMailboxHandlers(ctx: HandlerContext): MailboxHandlers {
  const { store } = ctx;

  const list = async (session: ImapSession, subscribedOnly: boolean): Promise<[ListedFolder[]]> => {
    const boxes = await store.listMailboxes(userOf(session));
    return [
      boxes
        .filter((b) => !subscribedOnly || b.subscribed)
        .map((b) => (b.specialUse ? { path: b.path, specialUse: b.specialUse } : { path: b.path })),
    ];
  };

  const quota = async (session: ImapSession): Promise<QuotaResult> => {
    const user = userOf(session);
    // the store enforces its quota; an explicit quotaFor option only changes what is reported
    const [q, own] = await Promise.all([store.quota(user), ctx.quotaFor ? ctx.quotaFor(user) : undefined]);
    const limit = own !== undefined ? own : q.limit;
    return { root: '', quota: limit ?? UNLIMITED_QUOTA_BYTES, storageUsed: q.used };
  };

  return {
    onList(_query, session, cb) {
      respond(ctx, 'LIST', session, cb)(() => list(session, false));
    },

    onLsub(_query, session, cb) {
      respond(ctx, 'LSUB', session, cb)(() => list(session, true));
    },

    onSubscribe(path, session, cb) {
      respond(ctx, 'SUBSCRIBE', session, cb)(
        async () => {
          await store.setSubscribed(userOf(session), path, true);
          return [true];
        },
        (code) => [code],
      );
    },

    onUnsubscribe(path, session, cb) {
      respond(ctx, 'UNSUBSCRIBE', session, cb)(
        async () => {
          await store.setSubscribed(userOf(session), mailboxName(session, path), false);
          return [true];
        },
        (code) => [code],
      );
    },

    onCreate(path, session, cb) {
      respond(ctx, 'CREATE', session, cb)(
        async () => {
          await store.createMailbox(userOf(session), path);
          return [true];
        },
        (code) => [code],
      );
    },

    onRename(path, newPath, session, cb) {
      respond(ctx, 'RENAME', session, cb)(
        async () => {
          await store.renameMailbox(userOf(session), path, newPath);
          return [true];
        },
        (code) => [code],
      );
    },

    onDelete(path, session, cb) {
      respond(ctx, 'DELETE', session, cb)(
        async () => {
          const user = userOf(session);
          const box = await store.openMailbox(user, path);
          if (!box) return ['NONEXISTENT'];
          await store.deleteMailbox(user, path);
          // sessions that have it selected cannot continue: imap-core says BYE to them
          ctx.notifier.fire(user, { command: 'DROP', mailbox: box.id });
          return [true, box.id];
        },
        (code) => [code],
      );
    },

    onOpen(path, session, cb) {
      respond(ctx, 'SELECT', session, cb)(
        async () => {
          const box = await store.openMailbox(userOf(session), path);
          if (!box) return ['NONEXISTENT'];
          // files dropped into this mailbox by other software reach IDLE at once
          watchSelected(ctx, session, box.id);
          return [
            {
              _id: box.id,
              // imap-core mutates this list; it must be complete, ascending and unique
              uidList: [...box.uids],
              uidValidity: box.uidValidity,
              uidNext: box.uidNext,
              // HIGHESTMODSEQ and the journal position the session reads on from
              modifyIndex: box.highestModseq,
              flags: [...box.keywords],
            },
          ];
        },
        (code) => [code],
      );
    },

    onStatus(path, session, cb) {
      respond(ctx, 'STATUS', session, cb)(
        async () => {
          const st = await store.mailboxStatus(userOf(session), path);
          if (!st) return ['NONEXISTENT'];
          return [
            {
              messages: st.messages,
              uidNext: st.uidNext,
              uidValidity: st.uidValidity,
              unseen: st.unseen,
              highestModseq: st.highestModseq,
            },
          ];
        },
        (code) => [code],
      );
    },

    onGetQuotaRoot(path, session, cb) {
      respond(ctx, 'GETQUOTAROOT', session, cb)(
        async () => {
          const st = await store.mailboxStatus(userOf(session), path);
          if (!st) return ['NONEXISTENT'];
          return [await quota(session)];
        },
        (code) => [code],
      );
    },

    onGetQuota(root, session, cb) {
      respond(ctx, 'GETQUOTA', session, cb)(
        async () => {
          if (root !== '') return ['NONEXISTENT'];
          return [await quota(session)];
        },
        (code) => [code],
      );
    },
  };
}
