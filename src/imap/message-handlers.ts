/** Handlers that change messages: APPEND, STORE, EXPUNGE, COPY, MOVE. */
import type { MessageMeta } from '../store/types.js';
import type { CopyInfo, ImapHandlers, ImapSession } from './imap-core-types.js';
import { setNoReason } from './commands.js';
import { mailboxName, respond, selectedFor, userOf, type HandlerContext } from './handler-context.js';
import { parseImapDateTime } from './imap-date.js';

type MessageHandlers = Required<Pick<ImapHandlers, 'onAppend' | 'onStore' | 'onExpunge' | 'onCopy' | 'onMove'>>;

export function createMessageHandlers(ctx: HandlerContext): MessageHandlers {
  const { store } = ctx;

  /** Writes `* n EXPUNGE` for UIDs this session knows (formatResponse also drops them from uidList). */
  const writeExpunges = (session: ImapSession, mailboxId: string, uids: number[]): void => {
    if (!selectedFor(session, mailboxId)) return;
    for (const uid of [...uids].sort((a, b) => a - b)) {
      const response = session.formatResponse('EXPUNGE', uid);
      if (response) session.writeStream.write(response);
    }
  };

  const copyInfo = (r: { uidValidity: number; sourceUids: number[]; destinationUids: number[] }): CopyInfo => ({
    uidValidity: r.uidValidity,
    sourceUid: [...r.sourceUids],
    destinationUid: [...r.destinationUids],
  });

  return {
    onAppend(path, flags, internaldate, raw, session, cb) {
      respond(ctx, 'APPEND', session, cb)(
        async () => {
          let internalDate: Date | undefined;
          if (internaldate) {
            const parsed = parseImapDateTime(internaldate);
            if (!parsed) return ['CANNOT'];
            internalDate = parsed;
          }
          // no origin: the session learns about its own EXISTS from the journal like everyone
          const result = await store.append(userOf(session), mailboxName(session, path), raw, { flags: [...flags], internalDate });
          return [true, { uidValidity: result.uidValidity, uid: result.uid }];
        },
        (code) => [code],
      );
    },

    onStore(mailboxId, update, session, cb) {
      respond(ctx, 'STORE', session, cb)(
        async () => {
          const selected = selectedFor(session, mailboxId);
          // imap-core checks read-only for STORE (see commands.ts) but not for UID STORE
          if (!selected || selected.readOnly) {
            setNoReason(session, 'Mailbox is read-only (opened with EXAMINE)');
            return ['READ-ONLY'];
          }
          if (!update.messages.length) return [true, []];
          const result = await store.storeFlags(mailboxId, update.messages, {
            action: update.action,
            flags: [...update.value],
            unchangedSince: update.unchangedSince > 0 ? update.unchangedSince : undefined,
            origin: session.id,
          });
          const condstore = !!selected.condstoreEnabled;
          if (!update.silent || condstore) {
            const changed = [...result.changed].sort((a: MessageMeta, b: MessageMeta) => a.uid - b.uid);
            for (const meta of changed) {
              const response = session.formatResponse('FETCH', meta.uid, {
                uid: update.isUid ? meta.uid : false,
                flags: meta.flags,
                modseq: condstore ? meta.modseq : false,
              });
              if (response) session.writeStream.write(response);
            }
          }
          return [true, [...result.modified]];
        },
        (code) => [code],
      );
    },

    onExpunge(mailboxId, update, session, cb) {
      respond(ctx, 'EXPUNGE', session, cb)(
        async () => {
          const selected = selectedFor(session, mailboxId);
          // Limit EXPUNGE to the messages this session knows: expunging one whose EXISTS it
          // has not seen yet would leave it a phantom (its own EXPUNGE entry is ignored).
          let uids: number[] | undefined;
          if (update.isUid) uids = [...(update.messages ?? [])];
          else if (selected) uids = [...selected.uidList];
          if (uids && !uids.length) return [true];
          const removed = await store.expunge(mailboxId, uids, session.id);
          if (!update.silent) writeExpunges(session, mailboxId, removed);
          return [true];
        },
        (code) => [code],
      );
    },

    onCopy(_connection, mailboxId, update, session, cb) {
      respond(ctx, 'COPY', session, cb)(
        async () => {
          if (!update.messages.length) {
            const target = await store.mailboxStatus(userOf(session), update.destination);
            if (!target) return ['TRYCREATE'];
            return [true, { uidValidity: target.uidValidity, sourceUid: [], destinationUid: [] }];
          }
          // no origin: if the target is the selected mailbox this session must see the EXISTS
          const result = await store.copyMessages(mailboxId, update.messages, update.destination);
          return [true, copyInfo(result)];
        },
        (code) => [code],
      );
    },

    onMove(mailboxId, update, session, cb) {
      respond(ctx, 'MOVE', session, cb)(
        async () => {
          // MOVE expunges from the source: not in a mailbox opened with EXAMINE
          if (selectedFor(session, mailboxId)?.readOnly) {
            setNoReason(session, 'Mailbox is read-only (opened with EXAMINE); COPY works');
            return ['READ-ONLY'];
          }
          if (!update.messages.length) {
            const target = await store.mailboxStatus(userOf(session), update.destination);
            if (!target) return ['TRYCREATE'];
            return [true, { uidValidity: target.uidValidity, sourceUid: [], destinationUid: [] }];
          }
          const result = await store.moveMessages(mailboxId, update.messages, update.destination, session.id);
          writeExpunges(session, mailboxId, result.sourceUids);
          return [true, copyInfo(result)];
        },
        (code) => [code],
      );
    },
  };
}
