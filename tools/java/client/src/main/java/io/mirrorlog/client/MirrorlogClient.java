package io.mirrorlog.client;

import java.io.BufferedInputStream;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * A small pipelined client of mirrorlogd's protocol v1 with failover.
 *
 * <p>One TCP connection at a time; many requests in flight on it. Each request
 * is encoded once, with its request id (and for appends the producer's
 * sequence numbers), and kept until answered. When the connection is lost, or
 * the server answers not-primary, fenced, too-many-connections or
 * shutting-down, a supervisor thread reconnects with backoff to the next
 * endpoint that answers Hello as primary and resends every unanswered request,
 * byte for byte, in the order first sent. The daemon's idempotence table then
 * turns a resend of an append that was already written into its original LSN,
 * so nothing is lost or written twice.
 *
 * <p>Invariant: request ids and append sequences are assigned and the frame is
 * written under one lock ({@code sendLock}), so the wire order equals the
 * sequence order on every connection, resends included. Answers are matched
 * by request id in a concurrent map, so the reader never waits for a writer.
 */
public final class MirrorlogClient implements Closeable {
    private static final Logger LOG = Logger.getLogger(MirrorlogClient.class.getName());

    /** An answer: opcode and body. Errors complete the future exceptionally instead. */
    static final class Answer {
        final int opcode;
        final byte[] body;

        Answer(int opcode, byte[] body) {
            this.opcode = opcode;
            this.body = body;
        }
    }

    private static final class Pending {
        final byte[] frame;
        final long deadlineNanos;
        /** An append's durability byte in {@code frame} (-1: not an append). */
        final int resendAt;
        final CompletableFuture<Answer> future = new CompletableFuture<>();
        /** Its transmission on the current connection may have been taken. */
        volatile boolean inFlight;
        /** An earlier transmission may have been written: it goes out again as a resend. */
        boolean maybeWritten;

        Pending(byte[] frame, long deadlineNanos, int resendAt) {
            this.frame = frame;
            this.deadlineNanos = deadlineNanos;
            this.resendAt = resendAt;
        }
    }

    private final class Conn {
        final Socket socket;
        final OutputStream out;
        final InputStream in;
        final String endpoint;
        final long installedNanos = System.nanoTime();
        volatile boolean dead;

        Conn(Socket s, String endpoint) throws IOException {
            this.socket = s;
            this.out = s.getOutputStream();
            this.in = new BufferedInputStream(s.getInputStream(), 1 << 16);
            this.endpoint = endpoint;
        }

        void kill(String why) {
            if (!dead) {
                dead = true;
                LOG.log(Level.INFO, "mirrorlog: connection to {0} lost: {1}", new Object[] {endpoint, why});
            }
            try {
                socket.close();
            } catch (IOException ignored) {
                // closing a broken socket
            }
            synchronized (supervisorWake) {
                supervisorWake.notifyAll();
            }
        }
    }

    private final List<String> endpoints;
    private final long timeoutNanos;
    private final String clientName;
    private final long producer;
    private final Object sendLock = new Object();
    private final Object supervisorWake = new Object();
    private final ConcurrentSkipListMap<Long, Pending> pending = new ConcurrentSkipListMap<>();
    private long nextRid = 1;
    /** Per journal, the next sequence of this client's appends (guarded by sendLock). */
    private final java.util.Map<String, Long> nextSeq = new java.util.HashMap<>();
    private volatile Conn conn;
    private volatile boolean closed;
    private volatile long epoch;
    private int nextEndpoint;
    private final int maxFrameBytes;
    /**
     * Bounds the requests in flight: memory, and the daemon's idempotence
     * window (1024 appends per producer by default), which a resend must fall in.
     */
    private final Semaphore slots;
    private final Thread supervisor;
    private final Thread timer;

    /**
     * Connects to the first endpoint that answers as primary, waiting up to
     * {@code timeoutMs} for one.
     */
    public MirrorlogClient(List<String> endpoints, long timeoutMs, String clientName, int maxInFlight,
            int maxFrameBytes) throws IOException {
        if (endpoints.isEmpty()) {
            throw new MirrorlogException(1, "no endpoints given");
        }
        this.endpoints = new ArrayList<>(endpoints);
        this.timeoutNanos = TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        this.clientName = clientName;
        this.slots = new Semaphore(Math.max(1, maxInFlight));
        this.maxFrameBytes = maxFrameBytes;
        long p;
        do {
            p = ThreadLocalRandom.current().nextLong();
        } while (p == 0);
        this.producer = p;
        long deadline = System.nanoTime() + timeoutNanos;
        Conn c = connectAny(deadline);
        if (c == null) {
            throw new MirrorlogException(Wire.E_UNAVAILABLE, "no endpoint of " + endpoints + " answered as primary");
        }
        install(c);
        supervisor = new Thread(this::supervise, "mirrorlog-supervisor");
        supervisor.setDaemon(true);
        supervisor.start();
        // Expiry and the stalled-connection kill run on their own thread,
        // which takes no lock a blocked socket write could hold.
        timer = new Thread(this::watch, "mirrorlog-timer");
        timer.setDaemon(true);
        timer.start();
    }

    /**
     * Waits for an answer and throws its error as an IOException. The
     * client's timer fails every request by its deadline, so this returns.
     */
    public static <T> T await(CompletableFuture<T> f) throws IOException {
        try {
            return f.get();
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof CompletionException && c.getCause() != null) {
                c = c.getCause(); // from a dependent stage (thenApply)
            }
            if (c instanceof IOException) {
                throw (IOException) c;
            }
            throw new IOException("mirrorlog: " + c, c);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while waiting for mirrorlogd", e);
        }
    }

    /** The epoch the current primary announced in Hello. */
    public long epoch() {
        return epoch;
    }

    /** Sends a request; the future completes with the answer or a MirrorlogException. */
    CompletableFuture<Answer> request(int opcode, Wire.Body body) {
        return send(opcode, () -> body);
    }

    /**
     * Sends an append of one record with the given durability (0 the journal's
     * default, 1 local, 2 remote-received, 3 remote-durable); completes with its LSN.
     */
    public CompletableFuture<Long> append(String journal, int durability, byte[] data, int off, int len) {
        // The sequence is taken under sendLock, with the frame's place on the wire.
        CompletableFuture<Answer> f = send(Wire.OP_APPEND,
                () -> Wire.append(journal, durability, producer, takeSeq(journal, 1), data, off, len),
                Wire.appendResendAt(journal));
        return f.thenApply(MirrorlogClient::appendedLsn);
    }

    /**
     * Sends an append of {@code records} (consecutive LSNs, written in one
     * batch: all durable or none after a crash) by the journal's writer
     * {@code writer} (from {@link #claim}; 0: a journal never claimed);
     * completes with the first LSN, or {@code writer-fenced} (18) once
     * another writer claimed the journal. Appends sent from one thread are
     * placed in the order sent.
     */
    public CompletableFuture<Long> appendAs(String journal, int durability, long writer, List<byte[]> records) {
        CompletableFuture<Answer> f = send(Wire.OP_APPEND,
                () -> Wire.appendMany(journal, durability, writer, producer, takeSeq(journal, records.size()),
                        records),
                Wire.appendResendAt(journal));
        return f.thenApply(MirrorlogClient::appendedLsn);
    }

    private static long appendedLsn(Answer a) {
        try {
            return Wire.appendedLsn(a.body);
        } catch (IOException e) {
            throw new CompletionException(e);
        }
    }

    /**
     * Claims {@code journal} as its one writer: every earlier writer is
     * fenced (its appends and marks fail with {@code writer-fenced}).
     * {@code payload} is appended as the claim's record. Completes with the
     * writer epoch to send with {@link #appendAs} and {@link #setMarkAs}, and
     * the claim record's LSN: every record of an earlier writer lies below
     * it, durable as {@code durability} says.
     */
    public CompletableFuture<long[]> claim(String journal, int durability, byte[] payload) {
        return send(Wire.OP_CLAIM, () -> Wire.claim(journal, durability, payload)).thenApply(a -> {
            try {
                return Wire.claimed(a.body);
            } catch (IOException e) {
                throw new CompletionException(e);
            }
        });
    }

    /** Reads up to {@code maxCount} records (about {@code maxBytes}) from {@code from}. */
    public Wire.RecordsAnswer read(String journal, long from, int maxCount, int maxBytes) throws IOException {
        return await(readAsync(journal, from, maxCount, maxBytes));
    }

    /** {@link #read}, answered by a future (reads pipeline on the connection). */
    public CompletableFuture<Wire.RecordsAnswer> readAsync(String journal, long from, int maxCount, int maxBytes) {
        return request(Wire.OP_READ, Wire.readRecords(journal, from, maxCount, maxBytes)).thenApply(a -> {
            try {
                return new Wire.RecordsAnswer(a.body, maxCount);
            } catch (IOException e) {
                throw new CompletionException(e);
            }
        });
    }

    /** The journal's mark. */
    public long getMark(String journal) throws IOException {
        return Wire.mark(await(request(Wire.OP_GET_MARK, Wire.journal(journal))).body);
    }

    /** Moves the mark of a journal never claimed. */
    public CompletableFuture<Void> setMark(String journal, long lsn) {
        return request(Wire.OP_SET_MARK, Wire.setMark(journal, lsn)).thenApply(a -> (Void) null);
    }

    /** Moves the mark as the journal's writer ({@link #claim}). */
    public CompletableFuture<Void> setMarkAs(String journal, long lsn, long writer) {
        return request(Wire.OP_SET_MARK, Wire.setMarkAs(journal, lsn, writer)).thenApply(a -> (Void) null);
    }

    /** Creates the journal; false if it exists already. */
    public boolean createJournal(String journal) throws IOException {
        try {
            await(request(Wire.OP_CREATE_JOURNAL, Wire.journal(journal)));
            return true;
        } catch (MirrorlogException e) {
            if (e.code() == Wire.E_JOURNAL_EXISTS) {
                return false;
            }
            throw e;
        }
    }

    /**
     * The first of {@code n} sequences of an append to {@code journal}
     * (called under sendLock). A new (random) producer's sequences start at
     * 1 in each journal, like the Rust client's: a daemon that does not know
     * the producer takes a resend of its first append.
     */
    private long takeSeq(String journal, int n) {
        long s = nextSeq.getOrDefault(journal, 1L);
        nextSeq.put(journal, s + n);
        return s;
    }

    private interface BodyFn {
        Wire.Body make();
    }

    private static CompletableFuture<Answer> failed(int code, String msg) {
        CompletableFuture<Answer> f = new CompletableFuture<>();
        f.completeExceptionally(new MirrorlogException(code, msg));
        return f;
    }

    private CompletableFuture<Answer> send(int opcode, BodyFn fn) {
        return send(opcode, fn, -1);
    }

    /** {@code resendAt}: an append's durability byte in the frame, else -1. */
    private CompletableFuture<Answer> send(int opcode, BodyFn fn, int resendAt) {
        Pending p;
        try {
            if (!slots.tryAcquire(timeoutNanos, TimeUnit.NANOSECONDS)) {
                return failed(Wire.E_TIMEOUT, "too many requests in flight for the whole request timeout");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return failed(Wire.E_TIMEOUT, "interrupted while waiting for a request slot");
        }
        synchronized (sendLock) {
            if (closed) {
                slots.release();
                return failed(15, "client closed");
            }
            Wire.Body body = fn.make();
            if (body.bodyLength() > maxFrameBytes) {
                // The daemon would close the connection on it (frame-too-large);
                // every resend would do the same.
                slots.release();
                return failed(Wire.E_RECORD_TOO_LARGE, "request of " + body.bodyLength()
                        + " bytes exceeds maxFrameBytes " + maxFrameBytes);
            }
            long rid = nextRid++;
            p = new Pending(body.frame(opcode, rid), System.nanoTime() + timeoutNanos, resendAt);
            p.future.whenComplete((a, e) -> slots.release());
            pending.put(rid, p);
            Conn c = conn;
            if (c != null && !c.dead) {
                p.inFlight = true;
                try {
                    c.out.write(p.frame);
                } catch (IOException e) {
                    // Stays pending: the supervisor resends it on the next connection.
                    c.kill(e.toString());
                }
            }
        }
        return p.future;
    }

    private void install(Conn c) {
        // The reader starts first: while the resends go out, the daemon's
        // answers are read, so it never stops reading for want of a reader.
        Thread t = new Thread(() -> readLoop(c), "mirrorlog-reader");
        t.setDaemon(true);
        t.start();
        synchronized (sendLock) {
            // Resend everything unanswered, in first-sent order, before any new
            // request can reach this connection.
            int resent = 0;
            for (Map.Entry<Long, Pending> e : pending.entrySet()) {
                Pending p = e.getValue();
                // An append sent before may have been written: say so, so
                // the daemon never writes it a second time (docs/protocol.md).
                p.maybeWritten |= p.inFlight;
                p.inFlight = true;
                if (p.maybeWritten && p.resendAt >= 0) {
                    Wire.markResend(p.frame, p.resendAt);
                }
                try {
                    c.out.write(p.frame);
                    resent++;
                } catch (IOException ex) {
                    c.kill(ex.toString());
                    break;
                }
            }
            conn = c;
            if (supervisor != null) {
                LOG.log(Level.INFO, "mirrorlog: connected to {0} (epoch {1}), resent {2} unanswered requests",
                        new Object[] {c.endpoint, Long.toString(epoch), Integer.toString(resent)});
            }
        }
    }

    private void readLoop(Conn c) {
        try {
            while (!c.dead) {
                Wire.Frame f = Wire.read(c.in);
                if (f.opcode == Wire.OP_ERROR) {
                    MirrorlogException err = Wire.error(f.body);
                    int code = err.code();
                    String msg = err.detail();
                    if (Wire.failsOver(code)) {
                        // Keep the request (if any) pending; move on. Not taken
                        // (not-primary, shutting-down): sent again, it is no resend.
                        Pending p = pending.get(f.rid);
                        if (p != null && (code == Wire.E_NOT_PRIMARY || code == Wire.E_SHUTTING_DOWN)) {
                            p.inFlight = false;
                        }
                        c.kill("server answered " + code + ": " + msg);
                        return;
                    }
                    if (f.rid == 0) {
                        // A connection-level error: the server closes after it.
                        c.kill("connection error " + code + ": " + msg);
                        return;
                    }
                    Pending p = pending.remove(f.rid);
                    if (p == null) {
                        continue; // a late answer to a request that expired
                    }
                    p.future.completeExceptionally(new MirrorlogException(code, msg));
                    continue;
                }
                Pending p = pending.remove(f.rid);
                if (p != null) {
                    p.future.complete(new Answer(f.opcode, f.body));
                }
            }
        } catch (IOException e) {
            c.kill(e.getMessage());
        }
    }

    /** Reconnects when the connection is dead; nothing else. */
    private void supervise() {
        long backoff = 20;
        while (!closed) {
            Conn c = conn;
            if (c != null && !c.dead) {
                synchronized (supervisorWake) {
                    try {
                        supervisorWake.wait(100);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
                continue;
            }
            Conn n = connectAny(System.nanoTime() + TimeUnit.SECONDS.toNanos(2));
            if (n == null) {
                try {
                    Thread.sleep(backoff);
                } catch (InterruptedException e) {
                    return;
                }
                backoff = Math.min(backoff * 2, 1000);
                continue;
            }
            backoff = 20;
            if (closed) {
                n.kill("client closed");
                return;
            }
            install(n);
        }
    }

    /**
     * Every 50 ms: fails requests past their deadline (code 208), and leaves a
     * connection that takes requests and never answers (a black-holed link, a
     * stalled peer) for another endpoint after half the timeout. Takes no lock
     * a blocked socket write holds; closing the socket unblocks that write.
     */
    private void watch() {
        while (!closed) {
            failExpired();
            Conn c = conn;
            Map.Entry<Long, Pending> oldest = pending.firstEntry();
            if (c != null && !c.dead && oldest != null) {
                long sentAt = oldest.getValue().deadlineNanos - timeoutNanos;
                long since = System.nanoTime() - Math.max(sentAt, c.installedNanos);
                if (since > timeoutNanos / 2) {
                    c.kill("no answer for half the request timeout");
                }
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                return;
            }
        }
    }

    private void failExpired() {
        long now = System.nanoTime();
        for (Map.Entry<Long, Pending> e : pending.entrySet()) {
            Pending p = e.getValue();
            if (now - p.deadlineNanos > 0) {
                // Failed before it leaves `pending`: its failure hooks have run
                // by the time the reader could miss it and answer a later request.
                p.future.completeExceptionally(new MirrorlogException(Wire.E_TIMEOUT,
                        "no answer within the request timeout (outcome unknown)"));
                pending.remove(e.getKey(), p);
            }
        }
    }

    /** Tries every endpoint once, starting after the last one used; null if none answers as primary. */
    private Conn connectAny(long deadline) {
        for (int i = 0; i < endpoints.size(); i++) {
            String ep = endpoints.get((nextEndpoint + i) % endpoints.size());
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            Conn c = connectOne(ep, (int) Math.max(100, Math.min(left, 2000)));
            if (c != null) {
                nextEndpoint = (nextEndpoint + i) % endpoints.size();
                return c;
            }
        }
        nextEndpoint = (nextEndpoint + 1) % endpoints.size();
        return null;
    }

    private Conn connectOne(String ep, int timeoutMs) {
        int colon = ep.lastIndexOf(':');
        if (colon <= 0) {
            LOG.warning("mirrorlog: endpoint '" + ep + "' is not HOST:PORT");
            return null;
        }
        Socket s = new Socket();
        try {
            s.setTcpNoDelay(true);
            s.setKeepAlive(true);
            s.connect(new InetSocketAddress(ep.substring(0, colon), Integer.parseInt(ep.substring(colon + 1))), timeoutMs);
            s.setSoTimeout(timeoutMs);
            Conn c = new Conn(s, ep);
            c.out.write(Wire.hello(clientName).frame(Wire.OP_HELLO, 0));
            Wire.Frame f = Wire.read(c.in);
            if (f.opcode != (Wire.OP_HELLO | Wire.RESPONSE)) {
                s.close();
                return null;
            }
            Wire.HelloAnswer h = new Wire.HelloAnswer(f.body);
            long ep0 = h.epoch;
            if (!h.primary) {
                s.close();
                return null;
            }
            s.setSoTimeout(0);
            epoch = ep0;
            return c;
        } catch (IOException | RuntimeException e) {
            try {
                s.close();
            } catch (IOException ignored) {
                // already failing
            }
            return null;
        }
    }

    /**
     * Waits up to {@code timeoutMs} for the requests in flight to be answered,
     * then closes; whatever is still unanswered fails with code 15.
     */
    public void close(long timeoutMs) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (!pending.isEmpty() && System.nanoTime() - deadline < 0) {
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        synchronized (sendLock) {
            closed = true;
        }
        Conn c = conn;
        if (c != null) {
            c.dead = true;
            try {
                c.socket.close();
            } catch (IOException ignored) {
                // closing
            }
        }
        supervisor.interrupt();
        timer.interrupt();
        for (Long rid : pending.keySet()) {
            Pending p = pending.remove(rid);
            if (p != null) {
                p.future.completeExceptionally(new MirrorlogException(15, "client closed"));
            }
        }
    }

    @Override
    public void close() {
        close(5000);
    }
}
