package io.mirrorlog.activemq;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.logging.Logger;
import io.mirrorlog.client.MirrorlogClient;
import io.mirrorlog.client.MirrorlogException;
import io.mirrorlog.client.Wire;
import org.apache.activeio.journal.InvalidRecordLocationException;
import org.apache.activeio.journal.Journal;
import org.apache.activeio.journal.JournalEventListener;
import org.apache.activeio.journal.RecordLocation;
import org.apache.activeio.packet.ByteArrayPacket;
import org.apache.activeio.packet.ByteSequence;
import org.apache.activeio.packet.Packet;

/**
 * ActiveMQ's journal ({@code org.apache.activeio.journal.Journal}) on a
 * mirrorlog appliance: every record is one append to a mirrorlog journal, a
 * {@link RecordLocation} is its LSN, the broker's mark is the journal's mark.
 *
 * <p>Bean properties: {@code endpoints} (comma separated HOST:PORT, the
 * primary and its replica: the client follows whichever is primary),
 * {@code journal} (created if missing), {@code durability} (default, local,
 * remote-received, remote-durable), {@code requestTimeoutMs},
 * {@code checkpointBytes} (written bytes after which the broker is asked for a
 * checkpoint), {@code deferMark}.
 *
 * <p>Promises kept here:
 * <ul>
 * <li>{@code write(p, true)} returns after the record and every write before
 * it are durable as the durability mode says. One connection carries every
 * append in call order and the daemon answers in LSN order, so the answer to
 * the newest append covers all earlier ones; an earlier unsynced write that
 * failed makes every later synced write and mark fail (sticky).</li>
 * <li>{@code setMark} also waits for every write issued before it.</li>
 * <li>With {@code deferMark} (the default) the journal is reclaimed only up to
 * the mark the broker set one checkpoint earlier. Stock 5.17.2 marks at the
 * newest record of the checkpoint's end, past messages that arrived during
 * the checkpoint and are not in the long-term store yet; a crash then lost
 * them. Keeping one checkpoint more and replaying it is safe: replay is
 * idempotent against the store.</li>
 * </ul>
 */
public class MirrorlogJournal implements Journal {
    private static final Logger LOG = Logger.getLogger(MirrorlogJournal.class.getName());

    private String endpoints = "127.0.0.1:7400";
    private String journal = "activemq";
    private String durability = "default";
    private long requestTimeoutMs = 30_000;
    private long checkpointBytes = 64L << 20;
    private boolean deferMark = true;
    private int maxInFlight = 1000;
    private int maxFrameBytes = 4 << 20;
    private boolean closed;

    private volatile MirrorlogClient client;
    private int durabilityCode;
    private volatile JournalEventListener listener;
    /** Held while an append is sent, so lastWrite follows the order on the wire. */
    private final Object writeLock = new Object();
    private volatile MirrorlogLocation lastWrite;
    /** The newest write's failure hook: done once that write is answered and the hook has run. */
    private volatile CompletableFuture<Long> lastSettled;
    private final AtomicReference<Throwable> asyncFailure = new AtomicReference<>();
    private final AtomicLong bytesSinceCheckpointRequest = new AtomicLong();
    private final Object markLock = new Object();
    /** The daemon's mark (records below it may be reclaimed). */
    private long mark;
    /** The broker's newest mark, applied at the next one when deferMark is on. */
    private long pendingMark;
    /** Records read ahead during recovery (one Read answer), null when none. Guarded by readAheadLock. */
    private final Object readAheadLock = new Object();
    private Records readAhead;

    public MirrorlogJournal() {}

    public void setEndpoints(String endpoints) {
        this.endpoints = endpoints;
    }

    public void setJournal(String journal) {
        this.journal = journal;
    }

    public void setDurability(String durability) {
        this.durability = durability;
    }

    public void setRequestTimeoutMs(long requestTimeoutMs) {
        this.requestTimeoutMs = requestTimeoutMs;
    }

    public void setCheckpointBytes(long checkpointBytes) {
        this.checkpointBytes = checkpointBytes;
    }

    public void setDeferMark(boolean deferMark) {
        this.deferMark = deferMark;
    }

    /** Requests in flight at most; keep it below the daemon's idempotence.window (1024). */
    public void setMaxInFlight(int maxInFlight) {
        this.maxInFlight = maxInFlight;
    }

    /** The daemon's limits.max_frame_bytes: a larger record fails here, not on the daemon. */
    public void setMaxFrameBytes(int maxFrameBytes) {
        this.maxFrameBytes = maxFrameBytes;
    }

    static int durabilityCode(String name) {
        switch (name) {
            case "default":
                return 0;
            case "local":
                return 1;
            case "remote-received":
                return 2;
            case "remote-durable":
                return 3;
            default:
                throw new IllegalArgumentException(
                        "durability must be default, local, remote-received or remote-durable, not '" + name + "'");
        }
    }

    /** Connects, creates the journal if missing and reads its mark. Called by Spring (init-method) or on first use. */
    public synchronized void start() throws IOException {
        if (closed) {
            throw new MirrorlogException(15, "journal closed");
        }
        if (client != null) {
            return;
        }
        durabilityCode = durabilityCode(durability);
        List<String> eps = new ArrayList<>();
        for (String e : endpoints.split(",")) {
            if (!e.trim().isEmpty()) {
                eps.add(e.trim());
            }
        }
        MirrorlogClient c = new MirrorlogClient(eps, requestTimeoutMs, "activemq-journal", maxInFlight, maxFrameBytes);
        try {
            c.createJournal(journal);
        } catch (IOException e) {
            c.close(0);
            throw e;
        }
        long m = readMark(c);
        synchronized (markLock) {
            mark = m;
            pendingMark = 0;
        }
        client = c;
        LOG.info("mirrorlog journal '" + journal + "' on " + eps + ", durability " + durability + ", mark " + m
                + (deferMark ? ", marks deferred by one checkpoint" : ""));
    }

    private MirrorlogClient client() throws IOException {
        MirrorlogClient c = client;
        if (c == null) {
            start();
            c = client;
        }
        return c;
    }

    private long readMark(MirrorlogClient c) throws IOException {
        return c.getMark(journal);
    }

    private void checkAsyncFailure() throws IOException {
        Throwable t = asyncFailure.get();
        if (t != null) {
            throw new IOException("an earlier unsynced mirrorlog write failed: " + t.getMessage(), t);
        }
    }

    @Override
    public RecordLocation write(Packet packet, boolean sync) throws IOException {
        MirrorlogClient c = client();
        checkAsyncFailure();
        ByteSequence seq = packet.asByteSequence();
        MirrorlogLocation loc;
        synchronized (writeLock) {
            CompletableFuture<Long> f = c.append(journal, durabilityCode, seq.getData(), seq.getOffset(), seq.getLength());
            loc = new MirrorlogLocation(f);
            lastWrite = loc;
            // Registered before any later write is sent: the reader thread
            // runs it when this write fails, before it can complete a later
            // write, so no later sync write or mark can miss the failure.
            lastSettled = f.whenComplete((lsn, err) -> {
                if (err == null) {
                    return;
                }
                Throwable cause = err.getCause() != null ? err.getCause() : err;
                if (cause instanceof MirrorlogException && ((MirrorlogException) cause).code() == Wire.E_FULL) {
                    requestCheckpoint();
                }
                // A synced write's failure goes to its caller; an unsynced one
                // leaves a hole nobody was told of, so it fails all that follows.
                if (!sync && asyncFailure.compareAndSet(null, cause)) {
                    LOG.severe("unsynced mirrorlog append failed; later synced writes and marks fail: "
                            + cause.getMessage());
                }
            });
        }
        long n = bytesSinceCheckpointRequest.addAndGet(seq.getLength());
        if (n >= checkpointBytes) {
            bytesSinceCheckpointRequest.addAndGet(-n);
            requestCheckpoint();
        }
        if (sync) {
            loc.lsn();
            checkAsyncFailure();
        }
        return loc;
    }

    private void requestCheckpoint() {
        JournalEventListener l = listener;
        if (l != null) {
            // overflowNotification only wakes the broker's checkpoint task.
            l.overflowNotification(lastWrite);
        }
    }

    @Override
    public Packet read(RecordLocation location) throws InvalidRecordLocationException, IOException {
        long lsn = ((MirrorlogLocation) location).lsn();
        synchronized (readAheadLock) {
            int i = readAhead == null ? -1 : readAhead.indexOf(lsn);
            if (i >= 0) {
                return new ByteArrayPacket(readAhead.data.get(i));
            }
        }
        Records r = readFrom(lsn, 1, 1);
        int i = r.indexOf(lsn);
        if (i < 0) {
            throw new InvalidRecordLocationException("no record at " + location + " in mirrorlog journal " + journal);
        }
        return new ByteArrayPacket(r.data.get(i));
    }

    /** One Read answer: the records (CRC32C checked) from the LSN asked for on. */
    private static final class Records {
        /** The LSN asked for. */
        long from;
        long[] lsns;
        List<byte[]> data = new ArrayList<>();

        /** The index of the first record at or after {@code lsn}, or -1 (also when lsn is before this answer). */
        int firstFrom(long lsn) {
            if (lsn < from) {
                return -1;
            }
            for (int i = 0; i < lsns.length; i++) {
                if (lsns[i] >= lsn) {
                    return i;
                }
            }
            return -1;
        }

        /** The index of the record at {@code lsn}, or -1. */
        int indexOf(long lsn) {
            int i = firstFrom(lsn);
            return i >= 0 && lsns[i] == lsn ? i : -1;
        }
    }

    private Records readFrom(long from, int maxCount, int maxBytes) throws IOException {
        Records out = new Records();
        out.from = from;
        Wire.RecordsAnswer r;
        try {
            r = client().read(journal, from, maxCount, maxBytes);
        } catch (MirrorlogException e) {
            if (e.code() == Wire.E_NOT_YET_WRITTEN) {
                out.lsns = new long[0];
                return out;
            }
            throw e;
        }
        out.lsns = r.lsns;
        out.data.addAll(r.data);
        return out;
    }

    @Override
    public RecordLocation getNextRecordLocation(RecordLocation location)
            throws InvalidRecordLocationException, IOException {
        long from;
        if (location == null) {
            long m;
            synchronized (markLock) {
                m = mark;
            }
            from = Math.max(1, m);
        } else {
            from = ((MirrorlogLocation) location).lsn() + 1;
        }
        synchronized (readAheadLock) {
            int i = readAhead == null ? -1 : readAhead.firstFrom(from);
            if (i < 0) {
                try {
                    readAhead = readFrom(from, 1024, 8 << 20);
                } catch (MirrorlogException e) {
                    if (e.code() == Wire.E_BELOW_MARK) {
                        throw new InvalidRecordLocationException("below the mark: " + e.getMessage(), e);
                    }
                    throw e;
                }
                i = readAhead.firstFrom(from);
            }
            return i < 0 ? null : MirrorlogLocation.of(readAhead.lsns[i]);
        }
    }

    @Override
    public void setMark(RecordLocation location, boolean sync) throws InvalidRecordLocationException, IOException {
        MirrorlogClient c = client();
        long lsn = ((MirrorlogLocation) location).lsn();
        // Every write issued before the mark is answered first. A failed synced
        // write was reported to its caller and does not stop the mark (after
        // "full", the checkpoint's mark is what frees space); a failed unsynced
        // one does, through checkAsyncFailure, whose flag its hook has set by
        // the time lastSettled is done.
        CompletableFuture<Long> settled = lastSettled;
        if (settled != null) {
            MirrorlogClient.await(settled.handle((v, e) -> (Void) null));
        }
        checkAsyncFailure();
        synchronized (markLock) {
            long target = deferMark ? pendingMark : lsn;
            if (deferMark) {
                pendingMark = Math.max(pendingMark, lsn);
            }
            if (target > mark) {
                MirrorlogClient.await(c.setMark(journal, target));
                mark = target;
            }
        }
        synchronized (readAheadLock) {
            // Recovery is over once the broker marks; drop the read-ahead.
            readAhead = null;
        }
    }

    @Override
    public RecordLocation getMark() throws IllegalStateException {
        synchronized (markLock) {
            return mark == 0 ? null : MirrorlogLocation.of(mark);
        }
    }

    @Override
    public void setJournalEventListener(JournalEventListener listener) {
        this.listener = listener;
    }

    @Override
    public void close() throws IOException {
        MirrorlogClient c;
        synchronized (this) {
            c = client;
            client = null;
            closed = true;
        }
        if (c != null) {
            c.close(requestTimeoutMs);
        }
    }

    @Override
    public String toString() {
        return "MirrorlogJournal(" + journal + " on " + endpoints + ", " + durability + ")";
    }
}
