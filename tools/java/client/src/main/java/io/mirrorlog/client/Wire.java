package io.mirrorlog.client;

import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.zip.CRC32C;

/**
 * Pure encode/decode of mirrorlog protocol v1 frames (docs/protocol.md), no
 * sockets. A frame is a 24-byte header (magic, version, opcode, request id,
 * body length, CRC32C of header bytes 0-15 and the body, reserved zero) and
 * the body. All integers little-endian. Its constants are public (the
 * adapters act on the error codes); the builders and decoders stay here.
 */
public final class Wire {
    public static final int MAGIC = 0x4C4D;
    public static final int VERSION = 1;
    public static final int HEADER = 24;
    /** Largest answer body we accept (the daemon's answers stay within its max_frame_bytes). */
    public static final int MAX_BODY = 64 << 20;

    public static final int OP_HELLO = 0x01;
    public static final int OP_APPEND = 0x02;
    public static final int OP_READ = 0x03;
    public static final int OP_SET_MARK = 0x06;
    public static final int OP_GET_MARK = 0x07;
    public static final int OP_CREATE_JOURNAL = 0x08;
    public static final int OP_CLAIM = 0x13;
    public static final int OP_ERROR = 0x7F;
    public static final int RESPONSE = 0x80;

    // Error codes the adapter acts on (docs/protocol.md, docs/api.md; the
    // Rust table is src/codes.rs, and tests/golden.rs checks these against it).
    public static final int E_FULL = 5;
    public static final int E_RECORD_TOO_LARGE = 6;
    public static final int E_JOURNAL_EXISTS = 8;
    public static final int E_BELOW_MARK = 11;
    public static final int E_NOT_YET_WRITTEN = 12;
    public static final int E_WRITER_FENCED = 18;
    public static final int E_NOT_PRIMARY = 200;
    public static final int E_SEQUENCE_UNKNOWN = 203;
    public static final int E_SEQUENCE_CONFLICT = 211;
    public static final int E_FENCED = 201;
    public static final int E_TOO_MANY_CONNECTIONS = 202;
    public static final int E_SHUTTING_DOWN = 205;
    public static final int E_TIMEOUT = 208;
    public static final int E_UNAVAILABLE = 209;

    /** Bit 7 of an append's durability byte: the client sent this append before. */
    public static final int RESEND = 0x80;
    /** Bit 6 of an append's durability byte: a writer epoch (u64) follows the byte. */
    public static final int WRITER = 0x40;

    private Wire() {}

    /** Sets the RESEND bit of the append in {@code frame} (durability byte at {@code at}) and seals the frame again. */
    static void markResend(byte[] frame, int at) {
        if ((frame[at] & RESEND) != 0) {
            return;
        }
        frame[at] |= (byte) RESEND;
        CRC32C crc = new CRC32C();
        crc.update(frame, 0, 16);
        crc.update(frame, HEADER, frame.length - HEADER);
        ByteBuffer.wrap(frame).order(ByteOrder.LITTLE_ENDIAN).putInt(16, (int) crc.getValue());
    }

    // Request bodies, one builder per request the adapter sends (the layouts
    // of docs/protocol.md; tests/golden.rs compares their frames with the
    // Rust encoder's).

    static Body hello(String client) {
        return new Body().u8(VERSION).u8(VERSION).str(client);
    }

    /** An append of one record; its durability byte is at {@link #appendResendAt}. */
    static Body append(String journal, int durability, long producer, long seq, byte[] data, int off, int len) {
        int size = Body.strBytes(journal) + 1 + 8 + 8 + 4 + 4 + len;
        return new Body(size).str(journal).u8(durability).u64(producer).u64(seq).u32(1).blob(data, off, len);
    }

    /**
     * An append of several records, written in one batch (all durable or
     * none after a crash), under writer epoch {@code writer} (0: none).
     */
    static Body appendMany(String journal, int durability, long writer, long producer, long seq,
            java.util.List<byte[]> records) {
        int size = Body.strBytes(journal) + 1 + (writer != 0 ? 8 : 0) + 8 + 8 + 4;
        for (byte[] r : records) {
            size += 4 + r.length;
        }
        Body b = new Body(size).str(journal).u8(durability | (writer != 0 ? WRITER : 0));
        if (writer != 0) {
            b.u64(writer);
        }
        b.u64(producer).u64(seq).u32(records.size());
        for (byte[] r : records) {
            b.blob(r, 0, r.length);
        }
        return b;
    }

    /** A Claim: the journal, the durability of the claim's record, its payload. */
    static Body claim(String journal, int durability, byte[] payload) {
        return new Body(Body.strBytes(journal) + 1 + 4 + payload.length).str(journal).u8(durability)
                .blob(payload, 0, payload.length);
    }

    /** Where an append frame's durability byte (and its RESEND bit) is. */
    static int appendResendAt(String journal) {
        return HEADER + Body.strBytes(journal);
    }

    static Body readRecords(String journal, long from, int maxCount, int maxBytes) {
        return new Body().str(journal).u64(from).u32(maxCount).u32(maxBytes);
    }

    static Body journal(String journal) {
        return new Body().str(journal);
    }

    static Body setMark(String journal, long lsn) {
        return new Body().str(journal).u64(lsn);
    }

    /** A SetMark by the journal's writer (its epoch trails the LSN). */
    static Body setMarkAs(String journal, long lsn, long writer) {
        return new Body().str(journal).u64(lsn).u64(writer);
    }

    // Answer bodies.

    /** A Hello answer. */
    static final class HelloAnswer {
        final int version;
        final String server;
        final long epoch;
        final boolean primary;

        HelloAnswer(byte[] body) throws IOException {
            Reader r = new Reader(body);
            version = r.u8();
            server = r.str();
            epoch = r.u64();
            primary = r.u8() == 1;
        }
    }

    /** The LSN of the first record of an Append answer. */
    static long appendedLsn(byte[] body) throws IOException {
        Reader r = new Reader(body);
        long lsn = r.u64();
        r.u32();
        return lsn;
    }

    /** A Claim answer: the writer epoch and the LSN of the claim's record. */
    static long[] claimed(byte[] body) throws IOException {
        Reader r = new Reader(body);
        return new long[] {r.u64(), r.u64()};
    }

    /** The LSN of a GetMark answer. */
    static long mark(byte[] body) throws IOException {
        return new Reader(body).u64();
    }

    /** An Error frame's body. */
    static MirrorlogException error(byte[] body) throws IOException {
        Reader r = new Reader(body);
        int code = r.u16();
        String msg = r.str();
        return new MirrorlogException(code, msg);
    }

    /** The records of a Read answer, each checked against its CRC32C. */
    public static final class RecordsAnswer {
        public final long[] lsns;
        public final long[] epochs;
        public final java.util.List<byte[]> data = new java.util.ArrayList<>();
        public final long nextLsn;

        RecordsAnswer(byte[] body, int maxCount) throws IOException {
            Reader r = new Reader(body);
            long n = r.u32();
            if (n > maxCount) {
                throw new IOException("mirrorlog: Read answered " + n + " records, asked for " + maxCount);
            }
            lsns = new long[(int) n];
            epochs = new long[(int) n];
            for (int i = 0; i < n; i++) {
                lsns[i] = r.u64();
                epochs[i] = r.u64();
                int crc = (int) r.u32();
                byte[] payload = r.blob();
                if (crc32c(payload) != crc) {
                    // The daemon verified it; a mismatch here is a corrupted transfer.
                    throw new IOException("mirrorlog: record " + lsns[i] + " failed its CRC32C check on receipt");
                }
                data.add(payload);
            }
            nextLsn = r.u64();
        }
    }

    /** Codes after which the client moves to another endpoint and resends. */
    static boolean failsOver(int code) {
        return code == E_NOT_PRIMARY || code == E_FENCED || code == E_TOO_MANY_CONNECTIONS
                || code == E_SHUTTING_DOWN;
    }

    /** A decoded frame: opcode, request id and body (CRC already checked). */
    static final class Frame {
        final int opcode;
        final long rid;
        final byte[] body;

        Frame(int opcode, long rid, byte[] body) {
            this.opcode = opcode;
            this.rid = rid;
            this.body = body;
        }
    }

    /**
     * Builds a request frame in one array: the header's 24 bytes are reserved
     * up front and filled by {@link #frame}, so a body built with its exact
     * size (an append) is copied once, from the caller's bytes into the frame.
     */
    static final class Body {
        private byte[] buf;
        private int pos = HEADER;

        Body() {
            this(64);
        }

        /** {@code bodyBytes}: the body's size if known (no growth, no trimming copy). */
        Body(int bodyBytes) {
            buf = new byte[HEADER + bodyBytes];
        }

        private void ensure(int n) {
            if (pos + n > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, pos + n));
            }
        }

        private Body le(long v, int bytes) {
            ensure(bytes);
            for (int i = 0; i < bytes; i++) {
                buf[pos++] = (byte) (v >>> (8 * i));
            }
            return this;
        }

        Body u8(int v) {
            return le(v, 1);
        }

        Body u16(int v) {
            return le(v, 2);
        }

        Body u32(long v) {
            return le(v, 4);
        }

        Body u64(long v) {
            return le(v, 8);
        }

        Body str(String s) {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            if (b.length > 0xFFFF) {
                throw new IllegalArgumentException("string longer than 65535 bytes");
            }
            u16(b.length);
            return raw(b, 0, b.length);
        }

        Body blob(byte[] b, int off, int len) {
            u32(len);
            return raw(b, off, len);
        }

        private Body raw(byte[] b, int off, int len) {
            ensure(len);
            System.arraycopy(b, off, buf, pos, len);
            pos += len;
            return this;
        }

        /** The body's size so far. */
        int bodyLength() {
            return pos - HEADER;
        }

        /** Fills in the header (and its CRC32C over header bytes 0-15 and the body); returns the frame. */
        byte[] frame(int opcode, long rid) {
            ByteBuffer h = ByteBuffer.wrap(buf).order(ByteOrder.LITTLE_ENDIAN);
            h.putShort(0, (short) MAGIC).put(2, (byte) VERSION).put(3, (byte) opcode).putLong(4, rid)
                    .putInt(12, pos - HEADER);
            CRC32C crc = new CRC32C();
            crc.update(buf, 0, 16);
            crc.update(buf, HEADER, pos - HEADER);
            h.putInt(16, (int) crc.getValue()).putInt(20, 0);
            return pos == buf.length ? buf : Arrays.copyOf(buf, pos);
        }

        /** The size of a string field. */
        static int strBytes(String s) {
            return 2 + s.getBytes(StandardCharsets.UTF_8).length;
        }
    }

    /** Reads one frame, checking magic, version, length and CRC before the body is used. */
    static Frame read(InputStream in) throws IOException {
        byte[] h = new byte[HEADER];
        readFully(in, h);
        ByteBuffer hb = ByteBuffer.wrap(h).order(ByteOrder.LITTLE_ENDIAN);
        int magic = hb.getShort(0) & 0xFFFF;
        int version = h[2] & 0xFF;
        int opcode = h[3] & 0xFF;
        long rid = hb.getLong(4);
        long len = hb.getInt(12) & 0xFFFFFFFFL;
        int crcWant = hb.getInt(16);
        if (magic != MAGIC) {
            throw new IOException("mirrorlog: bad frame magic from server");
        }
        if (version != VERSION) {
            throw new IOException("mirrorlog: server frame version " + version + ", expected " + VERSION);
        }
        if (len > MAX_BODY) {
            throw new IOException("mirrorlog: server frame of " + len + " bytes exceeds " + MAX_BODY);
        }
        byte[] body = new byte[(int) len];
        readFully(in, body);
        CRC32C crc = new CRC32C();
        crc.update(h, 0, 16);
        crc.update(body, 0, body.length);
        if ((int) crc.getValue() != crcWant) {
            throw new IOException("mirrorlog: frame CRC32C mismatch from server");
        }
        return new Frame(opcode, rid, body);
    }

    private static void readFully(InputStream in, byte[] b) throws IOException {
        int n = 0;
        while (n < b.length) {
            int r = in.read(b, n, b.length - n);
            if (r < 0) {
                throw new EOFException("mirrorlog: connection closed by server");
            }
            n += r;
        }
    }

    /** Reads a response body; every accessor throws on a short body. */
    static final class Reader {
        private final ByteBuffer b;

        Reader(byte[] body) {
            b = ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN);
        }

        private void need(int n) throws IOException {
            if (b.remaining() < n) {
                throw new IOException("mirrorlog: malformed answer (ends early)");
            }
        }

        int u8() throws IOException {
            need(1);
            return b.get() & 0xFF;
        }

        int u16() throws IOException {
            need(2);
            return b.getShort() & 0xFFFF;
        }

        long u32() throws IOException {
            need(4);
            return b.getInt() & 0xFFFFFFFFL;
        }

        long u64() throws IOException {
            need(8);
            return b.getLong();
        }

        String str() throws IOException {
            int n = u16();
            need(n);
            String s = new String(b.array(), b.position(), n, StandardCharsets.UTF_8);
            b.position(b.position() + n);
            return s;
        }

        byte[] blob() throws IOException {
            long n = u32();
            need((int) Math.min(n, Integer.MAX_VALUE));
            byte[] out = new byte[(int) n];
            b.get(out);
            return out;
        }
    }

    /** CRC32C of a payload, as the daemon stores it with every record. */
    static int crc32c(byte[] b) {
        CRC32C c = new CRC32C();
        c.update(b, 0, b.length);
        return (int) c.getValue();
    }
}
