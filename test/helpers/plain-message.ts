/**
 * A plain-text test message from Bob <bob@example.onion> to Alice <alice@localhost> (UTF-8,
 * 8bit, CRLF line ends, a fixed Date); `id` is the left side of its Message-ID (default:
 * random).
 */
export function plainMessage(subject: string, body: string, id = Math.random().toString(36).slice(2)): Buffer {
  return Buffer.from(
    [
      'From: Bob <bob@example.onion>',
      'To: Alice <alice@localhost>',
      `Subject: ${subject}`,
      `Message-ID: <${id}@example.onion>`,
      'Date: Thu, 26 Nov 2026 10:00:00 +0000',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      body,
      '',
    ].join('\r\n'),
    'utf8',
  );
}
