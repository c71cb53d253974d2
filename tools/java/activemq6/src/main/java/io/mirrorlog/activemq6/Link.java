package io.mirrorlog.activemq6;

import io.mirrorlog.client.MirrorlogClient;
import io.mirrorlog.client.MirrorlogException;
import io.mirrorlog.client.Wire;
import java.io.IOException;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Consumer;

/**
 * The adapter's one journal on mirrorlogd, held as its one writer: the
 * claim at start fences every earlier writer (an earlier broker's appends
 * and marks fail from then on), and once another broker claims the journal
 * this one's fail with {@code writer-fenced}, after which everything here
 * fails ({@link #fenced}) and the adapter stops its broker.
 *
 * <p>Appends are pipelined on the client's connection: the order of
 * {@link #append} calls is the order of their records in the journal, and
 * their answers come in that order (the daemon acknowledges in placement
 * order), so {@link #ackedEnd} is a prefix: every record below it is durable.
 *
 * <p>At most {@code maxOnWire} appends are on the wire at once. Appends made
 * while they are wait in a queue, in order, and go out together as one
 * batch when an answer comes back (group commit: one frame and one daemon
 * batch for many records). An append still waiting can be withdrawn
 * ({@link #withdraw}): a message consumed and acknowledged before its add
 * was sent is never written, nor its acknowledgement (as KahaDB cancels
 * the store task of a message acknowledged before it ran). Such an add is
 * handed over unencoded ({@link #appendLazy}): the sender encodes it when it
 * leaves, so a withdrawn one costs no encoding.
 *
 * <p>A clean stop {@link #drain}s first: everything handed over is sent and
 * answered before {@link #close} fails what is left.
 */
final class Link {
    /** At most this many payload bytes are merged into one batch (a single larger append goes alone). */
    static final int MERGE_BYTES = 256 * 1024;
    static final int MERGE_RECORDS = 4096;
    /** Counted per record against MERGE_BYTES (the appliance's batch limit counts record headers too). */
    static final int RECORD_OVERHEAD = 64;

    /** A record encoded only when it is sent (an add withdrawn first is never encoded). */
    interface Lazy {
        byte[] encode() throws IOException;
    }

    /** One append handed over: its records' first LSN once durable. */
    static final class Unit extends CompletableFuture<Long> {
        /** Its records; null for a lazy unit until it is taken to be sent. */
        List<byte[]> records;
        final Lazy lazy;
        /** Counted against MERGE_BYTES (a lazy unit's: its caller's estimate). */
        final int bytes;
        /** Taken out of the queue (sent, or withdrawn); guarded by {@link Link#out}. */
        boolean taken;

        Unit(List<byte[]> records) {
            this.records = records;
            this.lazy = null;
            int b = 0;
            for (byte[] r : records) {
                b += r.length + RECORD_OVERHEAD;
            }
            this.bytes = b;
        }

        Unit(Lazy lazy, int estimatedBytes) {
            this.lazy = lazy;
            this.bytes = estimatedBytes + RECORD_OVERHEAD;
        }

        int count() {
            return records != null ? records.size() : 1;
        }

        /** Encodes a lazy unit's record (no lock held: encoding a message is the costly part). */
        void encode() throws IOException {
            if (records == null) {
                records = one(lazy.encode());
            }
        }
    }

    private final MirrorlogClient client;
    final String journal;
    private final int durability;
    private final int maxFrameBytes;
    /** The writer epoch of this adapter's claim. */
    final long writer;
    /** The LSN of the claim's record: every earlier writer's record is below it. */
    final long claimLsn;
    private final AtomicLong ackedEnd = new AtomicLong();
    private final AtomicReference<IOException> fenced = new AtomicReference<>();
    private final Consumer<IOException> onFenced;
    /** Orders the appends handed to the client (the journal's order) and guards {@link #queued}. */
    private final ReentrantLock out = new ReentrantLock();
    private final ArrayDeque<Unit> queued = new ArrayDeque<>();
    private final AtomicInteger onWire = new AtomicInteger();
    /**
     * Appends handed over and not yet answered (completed, failed or
     * withdrawn); decremented after a unit's completion ran its callbacks.
     */
    private final AtomicInteger unanswered = new AtomicInteger();
    /** Counters: appends handed over, batches sent, appends withdrawn. */
    final AtomicLong handed = new AtomicLong(), batches = new AtomicLong(), withdrawn = new AtomicLong();
    /** The sender's turns that found nothing it could send (each a park, and a wake-up after it). */
    final AtomicLong idleTurns = new AtomicLong();
    private final int maxOnWire;
    private final int mergeBytes;
    private volatile boolean closed;
    /** The sender holds taken units it is encoding (guarded by {@link #out}): nothing may be sent before them. */
    private boolean encoding;
    /** Tests: while set, nothing handed over is sent (it waits in the queue). */
    private volatile boolean held;
    /** Sends the queued appends when the wire has room (never the client's reader thread: a send may block). */
    private final Thread sender;

    Link(MirrorlogClient client, String journal, int durability, int maxFrameBytes, int maxOnWire, byte[] header,
            Consumer<IOException> onFenced) throws IOException {
        this.client = client;
        this.journal = journal;
        this.durability = durability;
        this.maxFrameBytes = maxFrameBytes;
        this.maxOnWire = Math.max(1, maxOnWire);
        this.mergeBytes = Math.max(1, Math.min(MERGE_BYTES, maxFrameBytes / 2));
        this.onFenced = onFenced;
        client.createJournal(journal);
        long[] c = MirrorlogClient.await(client.claim(journal, durability, header));
        this.writer = c[0];
        this.claimLsn = c[1];
        ackedEnd.set(claimLsn + 1);
        sender = new Thread(this::sendLoop, "mirrorlog-sender-" + journal);
        sender.setDaemon(true);
        sender.start();
    }

    /** Throws if this writer was fenced. */
    void check() throws IOException {
        IOException e = fenced.get();
        if (e != null) {
            throw e;
        }
    }

    /**
     * Appends {@code records} in one batch (all durable or none); completes
     * with the first one's LSN once durable at the adapter's durability.
     * Records are placed in the order of the calls.
     */
    CompletableFuture<Long> append(List<byte[]> records) {
        return hand(new Unit(records));
    }

    /**
     * As {@link #append} of one record, encoded by {@code record} only when
     * it is sent: an append withdrawn before (see {@link #withdraw}) costs no
     * encoding. {@code estimatedBytes}: its size, for the batch limit.
     */
    CompletableFuture<Long> appendLazy(Lazy record, int estimatedBytes) {
        return hand(new Unit(record, estimatedBytes));
    }

    private CompletableFuture<Long> hand(Unit u) {
        IOException e = fenced.get();
        if (e != null) {
            return CompletableFuture.failedFuture(e);
        }
        handed.incrementAndGet();
        Sent sent = null;
        Exception failedUnit = null;
        boolean refused = false;
        out.lock();
        try {
            if (closed) {
                u.taken = true;
                refused = true;
            } else if (queued.isEmpty() && onWire.get() < maxOnWire && !held && !encoding) {
                unanswered.incrementAndGet();
                u.taken = true;
                List<Unit> one = new ArrayList<>(1);
                one.add(u);
                try {
                    // One record, the caller's own, encoded here under the
                    // caller's locks: only when nothing waits and the wire
                    // is free (light load), where the sender's hop would
                    // cost more latency than the encoding holds the locks.
                    u.encode();
                    sent = send(one, u.records);
                } catch (IOException | RuntimeException ex) {
                    failedUnit = ex;
                }
            } else {
                unanswered.incrementAndGet();
                queued.add(u);
            }
        } finally {
            out.unlock();
        }
        if (refused) {
            u.completeExceptionally(new IOException("mirrorlog link to journal '" + journal + "' closed"));
        } else if (failedUnit != null) {
            u.completeExceptionally(failedUnit);
            unanswered.decrementAndGet();
        } else if (sent != null) {
            sent.answer();
        } else if (onWire.get() < maxOnWire) {
            // Queued: the sender takes it now if the wire has room. If it
            // has none, the answer that makes room wakes the sender (read
            // after the queueing, so one of the two wakes it): a wake-up
            // now would find the wire full and park again, a context
            // switch per append under load.
            LockSupport.unpark(sender);
        }
        return u;
    }

    /**
     * Takes back an append not yet sent: true if {@code f} (from
     * {@link #append}) was still waiting; it is then never written, and the
     * caller cancels {@code f} (once it holds no lock: cancelling runs the
     * future's callbacks).
     */
    boolean withdraw(CompletableFuture<Long> f) {
        if (!(f instanceof Unit)) {
            return false;
        }
        Unit u = (Unit) f;
        out.lock();
        try {
            if (u.taken) {
                return false;
            }
            u.taken = true;
        } finally {
            out.unlock();
        }
        withdrawn.incrementAndGet();
        unanswered.decrementAndGet();
        return true;
    }

    /**
     * One batch per turn: its units are taken from the queue under
     * {@link #out}, their lazy records encoded without it (while
     * {@link #encoding} keeps {@link #append}'s direct send from overtaking
     * them), and the batch sent under it again, so the journal's order stays
     * the order of the calls.
     */
    private void sendLoop() {
        while (!closed) {
            List<Unit> units = new ArrayList<>();
            out.lock();
            try {
                if (onWire.get() < maxOnWire && !held) {
                    take(units);
                }
                encoding = !units.isEmpty();
            } finally {
                out.unlock();
            }
            if (units.isEmpty()) {
                // Nothing could be sent: woken by an append or an answer (the
                // bound is a safety net, not the mechanism).
                idleTurns.incrementAndGet();
                LockSupport.parkNanos(this, 50_000_000L);
                continue;
            }
            List<byte[]> records = new ArrayList<>(units.size());
            for (java.util.Iterator<Unit> it = units.iterator(); it.hasNext();) {
                Unit u = it.next();
                try {
                    u.encode();
                    records.addAll(u.records);
                } catch (IOException | RuntimeException ex) {
                    // That unit alone fails (no lock is held here: its callbacks may take the adapter's).
                    it.remove();
                    u.completeExceptionally(ex);
                    unanswered.decrementAndGet();
                }
            }
            Sent sent = null;
            out.lock();
            try {
                if (!units.isEmpty()) {
                    sent = send(units, records);
                }
                encoding = false;
            } finally {
                out.unlock();
            }
            // Answers may run callbacks here (the reply came first), and a
            // callback that blocks on a lock uses up a pending unpark: the
            // loop looks at the queue again before it parks.
            if (sent != null) {
                sent.answer();
            }
        }
    }

    /** Takes the next batch's units from the queue (under {@link #out}). */
    private void take(List<Unit> units) {
        int bytes = 0;
        int records = 0;
        while (!queued.isEmpty()) {
            Unit u = queued.peek();
            if (u.taken) { // withdrawn
                queued.poll();
                continue;
            }
            if (!units.isEmpty() && (bytes + u.bytes > mergeBytes || records + u.count() > MERGE_RECORDS)) {
                break;
            }
            queued.poll();
            u.taken = true;
            units.add(u);
            records += u.count();
            bytes += u.bytes;
        }
    }

    /** An append on the wire and the units it carries. */
    private final class Sent {
        final List<Unit> units;
        final int n;
        final CompletableFuture<Long> f;

        Sent(List<Unit> units, int n, CompletableFuture<Long> f) {
            this.units = units;
            this.n = n;
            this.f = f;
        }

        /**
         * Completes the units once the append is answered. Called without
         * {@link #out} held: a unit's completion takes the adapter's lock,
         * and a thread holding that lock may be waiting for {@code out}.
         */
        void answer() {
            f.whenComplete((lsn, err) -> {
                onWire.decrementAndGet();
                LockSupport.unpark(sender);
                if (err != null) {
                    Throwable c = fencing(err);
                    for (Unit u : units) {
                        u.completeExceptionally(c);
                        unanswered.decrementAndGet();
                    }
                    return;
                }
                ackedEnd.accumulateAndGet(lsn + n, Math::max);
                long at = lsn;
                for (Unit u : units) {
                    u.complete(at);
                    unanswered.decrementAndGet();
                    at += u.count();
                }
            });
        }
    }

    /**
     * Sends {@code units} (their {@code records} concatenated) as one
     * append; under {@link #out}, so appends go out in the order handed
     * over. The caller calls {@link Sent#answer} once it released {@code out}.
     */
    private Sent send(List<Unit> units, List<byte[]> records) {
        onWire.incrementAndGet();
        batches.incrementAndGet();
        CompletableFuture<Long> f;
        IOException fe = fenced.get();
        if (fe != null) {
            f = CompletableFuture.failedFuture(fe);
        } else {
            try {
                f = client.appendAs(journal, durability, writer, records);
            } catch (RuntimeException ex) {
                f = CompletableFuture.failedFuture(ex);
            }
        }
        return new Sent(units, records.size(), f);
    }

    /** The cause of a failed append; a {@code writer-fenced} one fences this link (once). */
    private Throwable fencing(Throwable err) {
        Throwable c = err instanceof CompletionException && err.getCause() != null ? err.getCause() : err;
        if (c instanceof MirrorlogException && ((MirrorlogException) c).code() == Wire.E_WRITER_FENCED) {
            IOException f = new IOException("this broker was fenced: another broker claimed mirrorlog journal '"
                    + journal + "' (" + ((MirrorlogException) c).detail() + ")", c);
            if (fenced.compareAndSet(null, f)) {
                onFenced.accept(f);
            }
            return fenced.get();
        }
        return c;
    }

    /** Every record below this LSN is durable (and every record placed later lies at or above it). */
    long ackedEnd() {
        return ackedEnd.get();
    }

    /** One record's payload by LSN. */
    CompletableFuture<byte[]> readAsync(long lsn) {
        return client.readAsync(journal, lsn, 1, maxFrameBytes).thenApply(r -> {
            if (r.lsns.length == 0 || r.lsns[0] != lsn) {
                throw new CompletionException(new IOException("mirrorlog journal '" + journal + "' has no record " + lsn));
            }
            return r.data.get(0);
        });
    }

    /** A chunk of records from {@code from}: LSNs and payloads, empty at the journal's end. */
    Wire.RecordsAnswer readChunk(long from, int maxBytes) throws IOException {
        try {
            return client.read(journal, from, 100_000, maxBytes);
        } catch (MirrorlogException e) {
            if (e.code() == Wire.E_NOT_YET_WRITTEN) {
                return null;
            }
            throw e;
        }
    }

    long mark() throws IOException {
        return client.getMark(journal);
    }

    void setMark(long lsn) throws IOException {
        check();
        MirrorlogClient.await(client.setMarkAs(journal, lsn, writer));
    }

    /** A round trip to the appliance (the broker's IOException handler probes with checkpoint). */
    void probe() throws IOException {
        check();
        client.getMark(journal);
    }

    /** Tests: holds everything handed over in the queue (true) or lets it go (false). */
    void hold(boolean h) {
        held = h;
        LockSupport.unpark(sender);
    }

    /** The counters, for the log. */
    String stats() {
        return handed.get() + " appends handed over, " + batches.get() + " batches sent, " + withdrawn.get()
                + " adds withdrawn (acknowledged before sent), " + idleTurns.get() + " idle sender turns";
    }

    /**
     * Sends what waits (a hold is lifted) and waits up to {@code boundMs} for
     * every append handed over to be answered, so that a clean stop loses
     * nothing the broker accepted (KahaDB drains its async store tasks at
     * stop). A fenced or unreachable writer's appends fail, which answers
     * them too. Returns how many are still unanswered at the bound (they
     * fail at {@link #close}).
     */
    int drain(long boundMs) {
        held = false;
        LockSupport.unpark(sender);
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(boundMs);
        int left;
        while ((left = unanswered.get()) > 0 && System.nanoTime() < deadline) {
            LockSupport.parkNanos(this, 1_000_000L);
        }
        return left;
    }

    /** Fails every append still waiting (after {@link #drain} on a clean stop) and closes the connection. */
    void close() {
        closed = true;
        List<Unit> left = new ArrayList<>();
        out.lock();
        try {
            for (Unit u : queued) {
                if (!u.taken) {
                    u.taken = true;
                    left.add(u);
                }
            }
            queued.clear();
        } finally {
            out.unlock();
        }
        // Failed without `out` held: a unit's callback takes the adapter's lock.
        IOException c = new IOException("mirrorlog link to journal '" + journal + "' closed");
        for (Unit u : left) {
            u.completeExceptionally(c);
            unanswered.decrementAndGet();
        }
        LockSupport.unpark(sender);
        client.close(2000);
    }

    static List<byte[]> one(byte[] r) {
        List<byte[]> l = new ArrayList<>(1);
        l.add(r);
        return l;
    }
}
