package io.mirrorlog.activemq6;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.util.ByteArrayInputStream;
import org.apache.activemq.util.MarshallingSupport;

/**
 * The records the adapter writes to its mirrorlog journal: one per broker
 * state change. Pure encode/decode, no I/O. Every record starts with its
 * type byte; integers are big-endian (DataOutput); names and ids are
 * modified UTF-8 (writeUTF). The layouts are in docs/activemq.md
 * ("ActiveMQ 6: records"), and stay readable by every later version: a new
 * field is a new type, never a changed one.
 */
final class Codec {
    /** The claim's record: who attached, with which OpenWire version. */
    static final int HEADER = 1;
    /** A message added to a destination: its id, priority, size and OpenWire body. */
    static final int ADD = 2;
    /** A message removed from a queue (acknowledged, expired, purged one by one). */
    static final int REMOVE = 3;
    /** A durable subscription added (or changed: selector, noLocal). */
    static final int SUB_ADD = 4;
    static final int SUB_DEL = 5;
    /** A durable subscription's acknowledgement of one message (also UNMATCHED). */
    static final int SUB_ACK = 6;
    /** An ADD, REMOVE or SUB_ACK made durable by an XA prepare: held until COMMIT or ROLLBACK. */
    static final int PREPARED = 7;
    /** A prepared transaction committed; its operations are in the same batch as plain records. */
    static final int COMMIT = 8;
    static final int ROLLBACK = 9;
    /** A destination removed, or all of its messages (removeAllMessages). */
    static final int DEST_DEL = 10;
    /** An XA transaction prepared: first in its prepare's batch (also for one with no operations). */
    static final int PREPARE = 11;
    /** Every message of a destination removed (removeAllMessages); its subscriptions stay. */
    static final int PURGE = 12;
    /**
     * An ADD, REMOVE or SUB_ACK of a local transaction too large for one
     * batch, written ahead of its COMMIT (same key): applied, at its own
     * LSN, only if that COMMIT follows; dropped at replay otherwise.
     */
    static final int STAGED = 13;

    /** The record format, written in the HEADER. */
    static final int FORMAT = 1;

    private Codec() {}

    /** A decoded record. Fields a type does not have stay null or zero. */
    static final class Rec {
        int type;
        ActiveMQDestination dest;
        String messageId;
        int priority;
        int size;
        int wireVersion;
        /** ADD: the OpenWire message; SUB_ADD: the OpenWire SubscriptionInfo; PREPARED, COMMIT, ROLLBACK: the xid. */
        byte[] body;
        String clientId;
        String subName;
        boolean retroactive;
        /** PREPARED, STAGED: the operation. */
        Rec inner;
        /** HEADER. */
        String broker;
        long millis;
    }

    private interface Writer {
        void write(DataOutputStream o) throws IOException;
    }

    private static byte[] make(int type, Writer w) {
        return make(type, 64, w);
    }

    /**
     * A record of {@code size} bytes if that is its exact size (the hot
     * records, ADD and REMOVE, are sized: no growing copies, no trimming
     * copy); any other size still works.
     */
    private static byte[] make(int type, int size, Writer w) {
        Out b = new Out(size);
        DataOutputStream o = new DataOutputStream(b);
        try {
            o.writeByte(type);
            w.write(o);
            o.flush();
        } catch (IOException e) {
            throw new UncheckedIOException(e); // a ByteArrayOutputStream does not fail
        }
        return b.bytes();
    }

    /** Hands over its buffer when it is exactly full. */
    private static final class Out extends ByteArrayOutputStream {
        Out(int size) {
            super(size);
        }

        byte[] bytes() {
            return count == buf.length ? buf : toByteArray();
        }
    }

    /** The bytes writeUTF writes for {@code s}: its length prefix and its modified UTF-8 (ActiveMQ counts those). */
    static int utfBytes(String s) {
        return 2 + (int) MarshallingSupport.countUTFBytes(s);
    }

    private static void dest(DataOutputStream o, ActiveMQDestination d) throws IOException {
        o.writeByte(d.getDestinationType());
        o.writeUTF(d.getPhysicalName());
    }

    private static void blob(DataOutputStream o, byte[] b, int off, int len) throws IOException {
        o.writeInt(len);
        o.write(b, off, len);
    }

    static byte[] header(String broker, int wireVersion, long millis) {
        return make(HEADER, o -> {
            o.writeByte(FORMAT);
            o.writeUTF(broker);
            o.writeInt(wireVersion);
            o.writeLong(millis);
        });
    }

    static byte[] add(ActiveMQDestination d, String messageId, int priority, int size, int wireVersion, byte[] body,
            int off, int len) {
        int bytes = 1 + 1 + utfBytes(d.getPhysicalName()) + utfBytes(messageId) + 1 + 4 + 1 + 4 + len;
        return make(ADD, bytes, o -> {
            dest(o, d);
            o.writeUTF(messageId);
            o.writeByte(priority);
            o.writeInt(size);
            o.writeByte(wireVersion);
            blob(o, body, off, len);
        });
    }

    static byte[] remove(ActiveMQDestination d, String messageId) {
        return make(REMOVE, 1 + 1 + utfBytes(d.getPhysicalName()) + utfBytes(messageId), o -> {
            dest(o, d);
            o.writeUTF(messageId);
        });
    }

    static byte[] subAdd(ActiveMQDestination d, String clientId, String subName, boolean retroactive,
            int wireVersion, byte[] info) {
        return make(SUB_ADD, o -> {
            dest(o, d);
            o.writeUTF(clientId);
            o.writeUTF(subName);
            o.writeBoolean(retroactive);
            o.writeByte(wireVersion);
            blob(o, info, 0, info.length);
        });
    }

    static byte[] subDel(ActiveMQDestination d, String clientId, String subName) {
        return make(SUB_DEL, o -> {
            dest(o, d);
            o.writeUTF(clientId);
            o.writeUTF(subName);
        });
    }

    static byte[] subAck(ActiveMQDestination d, String clientId, String subName, String messageId) {
        return make(SUB_ACK, o -> {
            dest(o, d);
            o.writeUTF(clientId);
            o.writeUTF(subName);
            o.writeUTF(messageId);
        });
    }

    static byte[] prepared(byte[] xid, byte[] inner) {
        return make(PREPARED, o -> {
            blob(o, xid, 0, xid.length);
            blob(o, inner, 0, inner.length);
        });
    }

    static byte[] staged(byte[] key, byte[] inner) {
        return make(STAGED, o -> {
            blob(o, key, 0, key.length);
            blob(o, inner, 0, inner.length);
        });
    }

    static byte[] outcome(int type, byte[] xid) {
        return make(type, o -> blob(o, xid, 0, xid.length));
    }

    static byte[] destDel(ActiveMQDestination d) {
        return make(DEST_DEL, o -> dest(o, d));
    }

    static byte[] purge(ActiveMQDestination d) {
        return make(PURGE, o -> dest(o, d));
    }

    /** Decodes a record; an unknown type or a short record is an IOException naming it. */
    static Rec decode(byte[] b) throws IOException {
        return decode(b, 0, b.length);
    }

    static Rec decode(byte[] b, int off, int len) throws IOException {
        return decode(b, off, len, true);
    }

    /** {@code decode} for the index at start: an ADD's body is skipped, not copied. */
    static Rec decodeIndex(byte[] b) throws IOException {
        return decode(b, 0, b.length, false);
    }

    private static Rec decode(byte[] b, int off, int len, boolean bodies) throws IOException {
        DataInputStream in = new DataInputStream(new ByteArrayInputStream(b, off, len));
        Rec r = new Rec();
        try {
            r.type = in.readUnsignedByte();
            switch (r.type) {
                case HEADER:
                    int fmt = in.readUnsignedByte();
                    if (fmt != FORMAT) {
                        throw new IOException("journal record format " + fmt + " (this adapter reads " + FORMAT + ")");
                    }
                    r.broker = in.readUTF();
                    r.wireVersion = in.readInt();
                    r.millis = in.readLong();
                    break;
                case ADD:
                    r.dest = readDest(in);
                    r.messageId = in.readUTF();
                    r.priority = in.readUnsignedByte();
                    r.size = in.readInt();
                    r.wireVersion = in.readUnsignedByte();
                    if (bodies) {
                        r.body = readBlob(in);
                    } else {
                        skipBlob(in);
                    }
                    break;
                case REMOVE:
                    r.dest = readDest(in);
                    r.messageId = in.readUTF();
                    break;
                case SUB_ADD:
                    r.dest = readDest(in);
                    r.clientId = in.readUTF();
                    r.subName = in.readUTF();
                    r.retroactive = in.readBoolean();
                    r.wireVersion = in.readUnsignedByte();
                    r.body = readBlob(in);
                    break;
                case SUB_DEL:
                    r.dest = readDest(in);
                    r.clientId = in.readUTF();
                    r.subName = in.readUTF();
                    break;
                case SUB_ACK:
                    r.dest = readDest(in);
                    r.clientId = in.readUTF();
                    r.subName = in.readUTF();
                    r.messageId = in.readUTF();
                    break;
                case PREPARED:
                case STAGED:
                    r.body = readBlob(in);
                    byte[] op = readBlob(in);
                    // A prepared add keeps its body (the recovered transaction
                    // re-sends it); a staged one is read back by LSN.
                    r.inner = decode(op, 0, op.length, bodies || r.type == PREPARED);
                    int t = r.inner.type;
                    boolean operation = t == ADD || t == REMOVE || t == SUB_ACK;
                    // A staged XA prepare or commit also stages its PREPARE,
                    // PREPARED and COMMIT records.
                    boolean stagedXa = r.type == STAGED && (t == PREPARE || t == PREPARED || t == COMMIT);
                    if (!operation && !stagedXa) {
                        throw new IOException("a " + (r.type == STAGED ? "staged" : "prepared") + " record of type " + t);
                    }
                    break;
                case PREPARE:
                case COMMIT:
                case ROLLBACK:
                    r.body = readBlob(in);
                    break;
                case DEST_DEL:
                case PURGE:
                    r.dest = readDest(in);
                    break;
                default:
                    throw new IOException("unknown journal record type " + r.type);
            }
            if (in.available() != 0) {
                throw new IOException("journal record of type " + r.type + " has " + in.available() + " bytes too many");
            }
        } catch (java.io.EOFException e) {
            throw new IOException("journal record of type " + r.type + " ends early", e);
        }
        return r;
    }

    private static ActiveMQDestination readDest(DataInputStream in) throws IOException {
        byte t = in.readByte();
        String name = in.readUTF();
        return ActiveMQDestination.createDestination(name, t);
    }

    private static void skipBlob(DataInputStream in) throws IOException {
        int n = in.readInt();
        if (n < 0 || n > in.available()) {
            throw new IOException("journal record blob of " + n + " bytes, " + in.available() + " left");
        }
        in.skipBytes(n);
    }

    private static byte[] readBlob(DataInputStream in) throws IOException {
        int n = in.readInt();
        if (n < 0 || n > in.available()) {
            throw new IOException("journal record blob of " + n + " bytes, " + in.available() + " left");
        }
        byte[] b = new byte[n];
        in.readFully(b);
        return b;
    }
}
