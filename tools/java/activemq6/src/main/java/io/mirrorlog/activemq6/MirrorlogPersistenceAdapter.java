package io.mirrorlog.activemq6;

import io.mirrorlog.client.MirrorlogClient;
import io.mirrorlog.client.Wire;
import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.BrokerServiceAware;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.broker.scheduler.JobSchedulerStore;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTopic;
import org.apache.activemq.command.DataStructure;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageId;
import org.apache.activemq.command.ProducerId;
import org.apache.activemq.command.SubscriptionInfo;
import org.apache.activemq.command.XATransactionId;
import org.apache.activemq.openwire.OpenWireFormat;
import org.apache.activemq.store.MessageStore;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.store.TopicMessageStore;
import org.apache.activemq.store.TransactionStore;
import org.apache.activemq.usage.SystemUsage;
import org.apache.activemq.util.ByteSequence;
import org.apache.activemq.util.SubscriptionKey;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * ActiveMQ Classic 6's persistence adapter on one mirrorlog journal, with no
 * KahaDB journal and no database: every broker state change is a record in
 * the journal (docs/activemq.md, "ActiveMQ 6"), mirrored on the appliance's
 * devices and shipped to its replica site; the index of every destination is
 * rebuilt at start by reading the journal from its mark.
 *
 * <p>One writer per journal: {@link #start} claims the journal, which fences
 * any broker that wrote it before (its appends fail from then on); a broker
 * fenced so stops itself.
 *
 * <p>Configure it as a plain bean ({@code <persistenceAdapter><bean class=
 * "io.mirrorlog.activemq6.MirrorlogPersistenceAdapter" .../>}) with
 * {@code endpoints}, {@code journal} and {@code durability}.
 */
public class MirrorlogPersistenceAdapter implements PersistenceAdapter, BrokerServiceAware {
    private static final Logger LOG = LoggerFactory.getLogger(MirrorlogPersistenceAdapter.class);

    // Configuration (bean properties).
    private String endpoints = "127.0.0.1:7400";
    private String journal = "activemq";
    private String durability = "local";
    private long requestTimeoutMs = 30_000;
    private int maxInFlight = 4096;
    private int maxFrameBytes = 64 << 20;
    private int appendsOnWire = 1;
    private int stageAboveBytes = 512 * 1024;
    private boolean cancelConsumedAdds = true;
    private long reclaimIntervalMs = 10_000;
    private long stopDrainMs = 30_000;

    // State. Invariant: index changes and the hand-over of records to the
    // link happen under `lock`, so journal order, sequence order and the
    // order of onAdd agree.
    final Object lock = new Object();
    long nextSeq;
    private final Map<ActiveMQDestination, QueueStore> queues = new LinkedHashMap<>();
    private final Map<ActiveMQDestination, TopicStore> topics = new LinkedHashMap<>();
    private final Map<String, Long> producerSeqs = new HashMap<>();
    private final Map<String, ProducerId> producerIds = new HashMap<>();
    /** Transactions prepared and not yet committed or rolled back, by xid. */
    final Map<String, Prepared> prepared = new LinkedHashMap<>();
    private final ThreadLocal<Batch> batch = new ThreadLocal<>();
    /**
     * Large local transactions being written ahead of their COMMIT: each
     * pins the journal (a bound below its first record) until its COMMIT is
     * durable, so the mark never passes a staged record whose COMMIT may
     * still come (under the lock).
     */
    private final List<long[]> staging = new ArrayList<>();
    /** Replay: the STAGED operations (with their LSNs) of each key whose COMMIT has not been read yet. */
    private final Map<String, List<Staged>> staged = new HashMap<>();

    /** Replay: one STAGED operation and its record's LSN. */
    private static final class Staged {
        final Codec.Rec op;
        final long lsn;

        Staged(Codec.Rec op, long lsn) {
            this.op = op;
            this.lsn = lsn;
        }
    }
    private final AtomicLong stageSeq = new AtomicLong();
    /** Set while a prepared transaction commits: its COMMIT record joins the batch. */
    final ThreadLocal<XATransactionId> committing = new ThreadLocal<>();
    private final ThreadLocal<OpenWireFormat> wireFormat = ThreadLocal.withInitial(OpenWireFormat::new);
    private final AtomicReference<Throwable> asyncFailure = new AtomicReference<>();

    private volatile Link link;
    private TxStore txStore;
    private BrokerService brokerService;
    private String brokerName = "localhost";
    private File directory;
    private boolean deleteAllOnStart;
    private long markSent;
    private ScheduledExecutorService reclaimer;
    /** The link counters last logged. */
    private String lastStats = "";

    /** One prepared transaction as replayed: its records and where they are. */
    static final class Prepared {
        final XATransactionId xid;
        final List<Codec.Rec> ops = new ArrayList<>();
        long firstLsn = Long.MAX_VALUE;

        Prepared(XATransactionId xid) {
            this.xid = xid;
        }
    }

    // ------------------------------------------------------------ lifecycle

    @Override
    public synchronized void start() throws Exception {
        if (link != null) {
            return;
        }
        List<String> eps = new ArrayList<>();
        for (String e : endpoints.split(",")) {
            if (!e.trim().isEmpty()) {
                eps.add(e.trim());
            }
        }
        MirrorlogClient client = new MirrorlogClient(eps, requestTimeoutMs, "activemq6:" + brokerName, maxInFlight,
                maxFrameBytes);
        byte[] header = Codec.header(brokerName, wireFormat.get().getVersion(), System.currentTimeMillis());
        Link l;
        try {
            l = new Link(client, journal, durabilityCode(durability), maxFrameBytes, appendsOnWire, header, this::fenced);
        } catch (IOException e) {
            client.close(0);
            throw e;
        }
        long t0 = System.nanoTime();
        long from;
        int records = 0;
        try {
            from = l.mark();
            if (deleteAllOnStart) {
                // Everything before this broker's claim is dropped.
                l.setMark(l.claimLsn);
                from = l.claimLsn;
            } else {
                records = replay(l, from);
            }
        } catch (IOException | RuntimeException e) {
            l.close(); // its sender thread and connection
            throw e;
        }
        markSent = from;
        link = l;
        getTxStore().recovered(this);
        LOG.info("mirrorlog journal '{}' on {} claimed as writer {} ({} durability): {} records replayed from lsn {} "
                + "in {} ms; {} queues, {} topics, {} prepared transactions", journal, eps, l.writer, durability,
                records, from, (System.nanoTime() - t0) / 1_000_000, queues.size(), topics.size(), prepared.size());
        if (reclaimIntervalMs > 0) {
            reclaimer = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "mirrorlog-reclaim");
                t.setDaemon(true);
                return t;
            });
            reclaimer.scheduleWithFixedDelay(() -> {
                try {
                    reclaim();
                    String s = l.stats();
                    if (!s.equals(lastStats)) {
                        lastStats = s;
                        LOG.info("mirrorlog: {}", s);
                    }
                } catch (Exception e) {
                    LOG.warn("mirrorlog: could not move the journal's mark: {}", e.toString());
                }
            }, reclaimIntervalMs, reclaimIntervalMs, TimeUnit.MILLISECONDS);
        }
    }

    /**
     * Writes what the broker handed over and is not yet written (up to
     * {@link #setStopDrainMs}), then closes the link. Not under this
     * adapter's monitor while it waits: the appends' callbacks run meanwhile.
     */
    @Override
    public void stop() throws Exception {
        Link l = link;
        if (l != null) {
            int left = l.drain(stopDrainMs);
            if (left > 0) {
                LOG.warn("mirrorlog: {} appends to journal '{}' were not answered within {} ms of the stop; "
                        + "they fail (their sends were not acknowledged)", left, journal, stopDrainMs);
            }
        }
        stopNow();
    }

    private synchronized void stopNow() {
        if (reclaimer != null) {
            reclaimer.shutdownNow();
            reclaimer = null;
        }
        Link l = link;
        link = null;
        if (l != null) {
            l.close();
        }
        synchronized (lock) {
            queues.clear();
            topics.clear();
            prepared.clear();
            producerSeqs.clear();
        }
        synchronized (producerIds) {
            producerIds.clear();
        }
    }

    private void fenced(IOException e) {
        LOG.error("mirrorlog: {}; stopping the broker", e.getMessage());
        BrokerService b = brokerService;
        if (b != null) {
            Thread t = new Thread(() -> {
                try {
                    b.stop();
                } catch (Exception ex) {
                    LOG.warn("stopping the fenced broker: {}", ex.toString());
                }
            }, "mirrorlog-fenced-stop");
            t.setDaemon(true);
            t.start();
        }
    }

    static int durabilityCode(String d) {
        switch (d) {
            case "local":
                return 1;
            case "remote-received":
                return 2;
            case "remote-durable":
                return 3;
            case "default":
                return 0;
            default:
                throw new IllegalArgumentException("durability must be local, remote-received, remote-durable or "
                        + "default (the journal's), not '" + d + "'");
        }
    }

    // --------------------------------------------------------------- replay

    /** Reads the journal from {@code from} to the claim and rebuilds the index; returns the records read. */
    private int replay(Link l, long from) throws IOException {
        int n = 0;
        long at = Math.max(from, 1);
        synchronized (lock) {
            while (at < l.claimLsn) {
                Wire.RecordsAnswer r = l.readChunk(at, 8 << 20);
                if (r == null || r.lsns.length == 0) {
                    break;
                }
                for (int i = 0; i < r.lsns.length && r.lsns[i] < l.claimLsn; i++) {
                    apply(Codec.decodeIndex(r.data.get(i)), r.lsns[i]);
                    n++;
                }
                at = r.nextLsn;
            }
            if (!staged.isEmpty()) {
                // Large local transactions whose COMMIT was never written:
                // their commit had not returned, so they rolled back.
                LOG.info("mirrorlog: {} large local transaction(s) without a COMMIT dropped at replay", staged.size());
                staged.clear();
            }
        }
        return n;
    }

    /** Applies one replayed record (under the lock). */
    private void apply(Codec.Rec r, long lsn) throws IOException {
        switch (r.type) {
            case Codec.HEADER:
                break;
            case Codec.ADD: {
                QueueStore s = store(r.dest);
                MessageId id = messageId(r.messageId);
                Entry old = s.byId.get(id);
                if (old != null) {
                    old.lsn = lsn; // updateMessage: the newest copy (the pin stays at the first, the place)
                    break;
                }
                Entry e = new Entry(nextSeq++, id, r.priority, r.size, lsn);
                e.lsn = lsn;
                s.index(e);
                producerSeen(id);
                if (s instanceof TopicStore && e.refs == 0) {
                    s.unindex(e);
                }
                break;
            }
            case Codec.REMOVE: {
                QueueStore s = store(r.dest);
                Entry e = s.byId.get(messageId(r.messageId));
                if (e != null) {
                    s.unindex(e);
                }
                break;
            }
            case Codec.SUB_ADD:
                topic(r.dest).replaySub(new SubscriptionKey(r.clientId, r.subName),
                        (SubscriptionInfo) unmarshal(r.wireVersion, r.body), r.retroactive, lsn);
                break;
            case Codec.SUB_DEL:
                topic(r.dest).replaySubDel(new SubscriptionKey(r.clientId, r.subName));
                break;
            case Codec.SUB_ACK:
                topic(r.dest).replayAck(new SubscriptionKey(r.clientId, r.subName), messageId(r.messageId));
                break;
            case Codec.PREPARE:
                preparedFor(r.body, lsn);
                break;
            case Codec.PREPARED: {
                Prepared p = preparedFor(r.body, lsn);
                p.ops.add(r.inner);
                hide(r.inner, true);
                break;
            }
            case Codec.STAGED:
                staged.computeIfAbsent(Arrays.toString(r.body), k -> new ArrayList<>()).add(new Staged(r.inner, lsn));
                break;
            case Codec.COMMIT:
            case Codec.ROLLBACK: {
                List<Staged> ops = r.type == Codec.COMMIT ? staged.remove(Arrays.toString(r.body)) : null;
                if (ops != null) {
                    for (Staged op : ops) {
                        apply(op.op, op.lsn);
                    }
                    break;
                }
                Prepared p = prepared.remove(Arrays.toString(r.body));
                if (p != null) {
                    for (Codec.Rec op : p.ops) {
                        hide(op, false);
                    }
                }
                break;
            }
            case Codec.DEST_DEL:
                if (r.dest.isQueue()) {
                    QueueStore q = queues.remove(r.dest);
                    if (q != null) {
                        q.clear();
                    }
                } else {
                    TopicStore t = topics.remove(r.dest);
                    if (t != null) {
                        t.clear();
                    }
                }
                break;
            case Codec.PURGE:
                store(r.dest).clear();
                break;
            default:
                throw new IOException("journal record type " + r.type + " at lsn " + lsn + " is not replayed");
        }
    }

    private Prepared preparedFor(byte[] xid, long lsn) throws IOException {
        String key = Arrays.toString(xid);
        Prepared p = prepared.get(key);
        if (p == null) {
            p = new Prepared((XATransactionId) unmarshal(wireFormat.get().getVersion(), xid));
            prepared.put(key, p);
        }
        p.firstLsn = Math.min(p.firstLsn, lsn);
        return p;
    }

    /** A prepared transaction's acknowledgement hides its message until the outcome (under the lock). */
    private void hide(Codec.Rec op, boolean hidden) {
        if (op.type == Codec.REMOVE) {
            QueueStore s = queues.get(op.dest);
            Entry e = s == null ? null : s.byId.get(messageId(op.messageId));
            if (e != null) {
                s.hide(e, hidden);
            }
        } else if (op.type == Codec.SUB_ACK) {
            TopicStore t = topics.get(op.dest);
            if (t != null) {
                t.hide(new SubscriptionKey(op.clientId, op.subName), messageId(op.messageId), hidden);
            }
        }
    }

    /** The outcome of a prepared transaction was written: its messages are shown again. */
    void settled(XATransactionId xid) throws IOException {
        synchronized (lock) {
            Prepared p = prepared.remove(Arrays.toString(marshal(xid)));
            if (p != null) {
                for (Codec.Rec op : p.ops) {
                    hide(op, false);
                }
            }
        }
    }

    // ---------------------------------------------------------------- stores

    /** The store of a destination, made on first use (under the lock). */
    QueueStore store(ActiveMQDestination d) {
        return d.isQueue() ? queue(d) : topic(d);
    }

    private QueueStore queue(ActiveMQDestination d) {
        return queues.computeIfAbsent(d, k -> new QueueStore(this, k));
    }

    TopicStore topic(ActiveMQDestination d) {
        return topics.computeIfAbsent(d, k -> new TopicStore(this, k));
    }

    @Override
    public Set<ActiveMQDestination> getDestinations() {
        synchronized (lock) {
            Set<ActiveMQDestination> s = new HashSet<>(queues.keySet());
            s.addAll(topics.keySet());
            return s;
        }
    }

    @Override
    public MessageStore createQueueMessageStore(ActiveMQQueue destination) throws IOException {
        QueueStore s;
        synchronized (lock) {
            s = queue(destination);
        }
        return getTxStore().proxy(s);
    }

    @Override
    public TopicMessageStore createTopicMessageStore(ActiveMQTopic destination) throws IOException {
        TopicStore s;
        synchronized (lock) {
            s = topic(destination);
        }
        return getTxStore().proxy(s);
    }

    @Override
    public JobSchedulerStore createJobSchedulerStore() throws IOException, UnsupportedOperationException {
        throw new UnsupportedOperationException("the mirrorlog adapter has no job scheduler store "
                + "(schedulerSupport must stay false)");
    }

    @Override
    public void removeQueueMessageStore(ActiveMQQueue destination) {
        removeStore(destination);
    }

    @Override
    public void removeTopicMessageStore(ActiveMQTopic destination) {
        removeStore(destination);
    }

    private void removeStore(ActiveMQDestination d) {
        CompletableFuture<Long> written;
        synchronized (lock) {
            QueueStore s = d.isQueue() ? queues.remove(d) : topics.remove(d);
            if (s == null || link == null) {
                return;
            }
            s.clear();
            written = link.append(Link.one(Codec.destDel(d)));
        }
        try {
            await(written);
        } catch (IOException e) {
            LOG.warn("mirrorlog: removing {} was not recorded: {}", d, e.toString());
        }
    }

    synchronized TxStore getTxStore() {
        if (txStore == null) {
            txStore = new TxStore(this, brokerService);
        }
        return txStore;
    }

    @Override
    public TransactionStore createTransactionStore() throws IOException {
        return getTxStore();
    }

    // ---------------------------------------------------------- transactions

    /** The batch of the transaction the calling thread commits or prepares, or null. */
    Batch batch() {
        return batch.get();
    }

    @Override
    public void beginTransaction(ConnectionContext context) throws IOException {
        check();
        XATransactionId xid = context == null ? null : context.getXid();
        Batch b = new Batch(xid == null ? null : marshal(xid));
        XATransactionId c = committing.get();
        b.recovered = c != null && getTxStore().isRecovered(c);
        if (xid != null) {
            b.addPlain(Codec.outcome(Codec.PREPARE, b.preparing));
        }
        batch.set(b);
    }

    @Override
    public void commitTransaction(ConnectionContext context) throws IOException {
        Batch b = batch.get();
        batch.remove();
        if (b == null) {
            return;
        }
        XATransactionId xid = committing.get();
        if (xid != null) {
            committing.remove();
            b.add(Codec.outcome(Codec.COMMIT, marshal(xid)), lsn -> { }, null);
        }
        if (b.records.isEmpty()) {
            return;
        }
        String preparing = b.preparing == null ? null : Arrays.toString(b.preparing);
        boolean staged = bytes(b.records) > stageAboveBytes;
        CompletableFuture<Long> written = null;
        synchronized (lock) {
            if (preparing != null) {
                // Prepared here: its records pin the journal (the mark stays
                // below them, from a bound below their LSNs while in flight)
                // until its outcome is written.
                Prepared p = new Prepared(context.getXid());
                p.firstLsn = link().ackedEnd();
                prepared.put(preparing, p);
            }
            if (!staged) {
                written = link().append(b.records);
            }
        }
        try {
            if (staged) {
                commitStaged(b);
            } else {
                b.durable(await(written));
            }
        } catch (IOException e) {
            b.failed();
            if (preparing != null) {
                synchronized (lock) {
                    prepared.remove(preparing);
                }
            }
            throw e;
        }
        if (xid != null) {
            settled(xid);
        }
    }

    private static long bytes(List<byte[]> records) {
        long n = 0;
        for (byte[] r : records) {
            n += r.length;
        }
        return n;
    }

    /**
     * Writes a transaction outcome too large for one batch (a local commit,
     * an XA prepare with its operations, an XA commit with them): its
     * records are written ahead as STAGED records (in batches of at most
     * {@code stageAboveBytes}), then a COMMIT of the staging key, the one
     * record that makes them count; replay applies them there, in order. A
     * crash before that COMMIT is durable leaves staged records that replay
     * drops: the commit or prepare had not returned, so the transaction
     * rolled back (an XA transaction manager presumes abort for a prepare
     * that did not return). Returns once the COMMIT is durable; if it
     * throws, the caller undoes the batch.
     */
    private void commitStaged(Batch b) throws IOException {
        Link l = link();
        byte[] key = java.nio.ByteBuffer.allocate(16).putLong(l.writer).putLong(stageSeq.incrementAndGet()).array();
        List<List<byte[]>> chunks = new ArrayList<>();
        List<byte[]> chunk = new ArrayList<>();
        long size = 0;
        for (byte[] r : b.records) {
            byte[] s = Codec.staged(key, r);
            if (!chunk.isEmpty() && size + s.length > stageAboveBytes) {
                chunks.add(chunk);
                chunk = new ArrayList<>();
                size = 0;
            }
            chunk.add(s);
            size += s.length;
        }
        chunks.add(chunk);
        long[] pin;
        List<CompletableFuture<Long>> written = new ArrayList<>();
        synchronized (lock) {
            pin = new long[] {l.ackedEnd()};
            staging.add(pin);
            for (List<byte[]> c : chunks) {
                written.add(l.append(c));
            }
        }
        boolean commitSent = false;
        boolean done = false;
        try {
            long[] lsns = new long[b.records.size()];
            int i = 0;
            for (int c = 0; c < chunks.size(); c++) {
                long first = await(written.get(c));
                for (int k = 0; k < chunks.get(c).size(); k++) {
                    lsns[i++] = first + k;
                }
            }
            commitSent = true;
            await(l.append(Link.one(Codec.outcome(Codec.COMMIT, key))));
            b.durableAt(lsns);
            done = true;
        } catch (IOException e) {
            if (commitSent) {
                // The COMMIT's outcome is unknown: it may be durable. The pin
                // stays until this broker restarts, so that the mark never
                // passes part of a transaction a replay might apply.
                LOG.warn("mirrorlog: the COMMIT of a large transaction's staged records failed ({}); the journal's mark "
                        + "stays below its records until the broker restarts", e.toString());
            }
            throw e;
        } finally {
            if (done || !commitSent) {
                synchronized (lock) {
                    staging.remove(pin);
                }
            }
        }
    }

    @Override
    public void rollbackTransaction(ConnectionContext context) throws IOException {
        Batch b = batch.get();
        batch.remove();
        committing.remove();
        if (b != null) {
            b.failed();
        }
    }

    /** Records the outcome of a prepared transaction on its own (one without operations to carry it). */
    void writeOutcome(int type, XATransactionId xid) throws IOException {
        check();
        CompletableFuture<Long> written;
        synchronized (lock) {
            written = link().append(Link.one(Codec.outcome(type, marshal(xid))));
        }
        await(written);
        settled(xid);
    }

    // ------------------------------------------------------ journal plumbing

    Link link() throws IOException {
        Link l = link;
        if (l == null) {
            throw new IOException("the mirrorlog persistence adapter is not started");
        }
        return l;
    }

    /** Throws the failure of this writer: fenced, or an earlier pipelined append that failed. */
    void check() throws IOException {
        link().check();
        Throwable t = asyncFailure.get();
        if (t != null) {
            throw new IOException("an earlier acknowledgement could not be written to mirrorlog: " + t, t);
        }
    }

    /** A pipelined append nobody waits for: a failure fails the next operation. */
    void pipelined(CompletableFuture<Long> f) {
        f.whenComplete((v, e) -> {
            if (e != null) {
                Throwable c = cause(e);
                asyncFailure.compareAndSet(null, c);
                LOG.error("mirrorlog: a pipelined append failed: {}", c.toString());
            }
        });
    }

    static <T> T await(CompletableFuture<T> f) throws IOException {
        try {
            return f.get();
        } catch (ExecutionException e) {
            Throwable c = cause(e);
            if (c instanceof IOException) {
                throw (IOException) c;
            }
            throw new IOException(c.toString(), c);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new java.io.InterruptedIOException("interrupted while waiting for mirrorlogd");
        }
    }

    static Throwable cause(Throwable e) {
        while ((e instanceof CompletionException || e instanceof ExecutionException) && e.getCause() != null) {
            e = e.getCause();
        }
        return e;
    }

    int wireVersion() {
        return wireFormat.get().getVersion();
    }

    byte[] marshal(DataStructure d) throws IOException {
        ByteSequence b = wireFormat.get().marshal(d);
        return Arrays.copyOfRange(b.getData(), b.getOffset(), b.getOffset() + b.getLength());
    }

    Object unmarshal(int version, byte[] b) throws IOException {
        OpenWireFormat wf = wireFormat.get();
        if (wf.getVersion() != version) {
            wf = new OpenWireFormat(version);
        }
        return wf.unmarshal(new ByteSequence(b));
    }

    byte[] encodeAdd(ActiveMQDestination d, Message m) throws IOException {
        OpenWireFormat wf = wireFormat.get();
        ByteSequence b = wf.marshal(m);
        return Codec.add(d, m.getMessageId().toProducerKey(), m.getPriority(), m.getSize(), wf.getVersion(),
                b.getData(), b.getOffset(), b.getLength());
    }

    Message load(Entry e) throws IOException {
        return await(loadAsync(e));
    }

    CompletableFuture<Message> loadAsync(Entry e) {
        Message inFlight;
        long lsn;
        synchronized (lock) {
            inFlight = e.inFlight;
            lsn = e.lsn;
        }
        if (inFlight != null || lsn < 0) {
            return CompletableFuture.completedFuture(inFlight);
        }
        Link l = link;
        if (l == null) {
            return CompletableFuture.failedFuture(new IOException("the mirrorlog persistence adapter is stopped"));
        }
        return l.readAsync(lsn).thenApply(b -> {
            try {
                Codec.Rec r = Codec.decode(b);
                if (r.type == Codec.STAGED) {
                    r = r.inner; // the add of a large transaction
                }
                if (r.type != Codec.ADD) {
                    throw new IOException("lsn " + lsn + " holds a record of type " + r.type + ", not a message");
                }
                return (Message) unmarshal(r.wireVersion, r.body);
            } catch (IOException ex) {
                throw new CompletionException(ex);
            }
        });
    }

    /**
     * A message id from its producer key ({@code MessageId.toProducerKey}),
     * sharing one ProducerId per producer: the heap an index entry costs
     * stays small (docs/activemq.md, sizing).
     */
    MessageId messageId(String key) {
        int at = key.lastIndexOf(':');
        if (at <= 0) {
            return new MessageId(key);
        }
        ProducerId p;
        synchronized (producerIds) {
            p = producerIds.computeIfAbsent(key.substring(0, at), ProducerId::new);
        }
        return new MessageId(p, Long.parseLong(key.substring(at + 1)));
    }

    /** Notes a message's producer sequence (duplicate detection after a failover), under the lock. */
    void producerSeen(MessageId id) {
        if (id.getProducerId() != null) {
            producerSeqs.merge(id.getProducerId().toString(), id.getProducerSequenceId(), Math::max);
        }
    }

    @Override
    public long getLastProducerSequenceId(ProducerId id) {
        synchronized (lock) {
            Long s = producerSeqs.get(id.toString());
            return s == null ? -1 : s;
        }
    }

    // ------------------------------------------------------------ reclaiming

    /**
     * Moves the journal's mark to the lowest LSN still needed: the oldest
     * message any destination or subscription holds, a live subscription's
     * creation, a prepared transaction's records; never past what is
     * durable (every record in flight lies above it).
     */
    void reclaim() throws IOException {
        Link l = link();
        long low = needed(l);
        synchronized (this) {
            if (low > markSent) {
                l.setMark(low);
                markSent = low;
            }
        }
    }

    /**
     * The lowest LSN still needed: where the mark may move. Every live thing
     * carries a pin at or below its record's LSN from the moment its record
     * is handed over, so this never passes a record the appliance answered
     * before the index learnt its LSN (ReclaimTest).
     */
    long needed(Link l) {
        synchronized (lock) {
            long low = l.ackedEnd();
            for (QueueStore s : queues.values()) {
                low = Math.min(low, s.lowestLsn());
            }
            for (TopicStore s : topics.values()) {
                low = Math.min(low, s.lowestLsn());
            }
            for (Prepared p : prepared.values()) {
                low = Math.min(low, p.firstLsn);
            }
            for (long[] pin : staging) {
                low = Math.min(low, pin[0]);
            }
            return low;
        }
    }

    @Override
    public void checkpoint(boolean cleanup) throws IOException {
        // The broker's IOException handler probes with checkpoint(true):
        // it must fail while the appliance cannot be reached.
        link().probe();
        if (cleanup) {
            reclaim();
        }
    }

    @Override
    public void deleteAllMessages() throws IOException {
        if (link == null) {
            deleteAllOnStart = true;
            return;
        }
        List<ActiveMQDestination> all = new ArrayList<>(getDestinations());
        for (ActiveMQDestination d : all) {
            removeStore(d);
        }
        synchronized (lock) {
            prepared.clear();
        }
    }

    @Override
    public long size() {
        synchronized (lock) {
            long n = 0;
            for (QueueStore s : queues.values()) {
                n += s.getMessageStoreStatistics().getMessageSize().getTotalSize();
            }
            for (TopicStore s : topics.values()) {
                n += s.getMessageStoreStatistics().getMessageSize().getTotalSize();
            }
            return n;
        }
    }

    @Override
    public long getLastMessageBrokerSequenceId() {
        return 0;
    }

    @Override
    public void allowIOResumption() {
    }

    // --------------------------------------------------------- configuration

    @Override
    public void setBrokerService(BrokerService brokerService) {
        this.brokerService = brokerService;
    }

    @Override
    public void setUsageManager(SystemUsage usageManager) {
    }

    @Override
    public void setBrokerName(String brokerName) {
        this.brokerName = brokerName;
    }

    @Override
    public void setDirectory(File dir) {
        this.directory = dir;
    }

    @Override
    public File getDirectory() {
        return directory;
    }

    /** Comma-separated host:port of mirrorlogd, primary and replica (the client follows a failover). */
    public void setEndpoints(String endpoints) {
        this.endpoints = endpoints;
    }

    public String getEndpoints() {
        return endpoints;
    }

    /** The journal this broker owns (created if missing). */
    public void setJournal(String journal) {
        this.journal = journal;
    }

    public String getJournal() {
        return journal;
    }

    /** local, remote-received, remote-durable, or default (the journal's configured one). */
    public void setDurability(String durability) {
        durabilityCode(durability);
        this.durability = durability;
    }

    public String getDurability() {
        return durability;
    }

    public void setRequestTimeoutMs(long requestTimeoutMs) {
        this.requestTimeoutMs = requestTimeoutMs;
    }

    public void setMaxInFlight(int maxInFlight) {
        this.maxInFlight = maxInFlight;
    }

    public void setMaxFrameBytes(int maxFrameBytes) {
        this.maxFrameBytes = maxFrameBytes;
    }

    /**
     * How many appends may be on the wire at once; records handed over
     * meanwhile wait and go out together as one batch, and an add still
     * waiting when its message is acknowledged is never written.
     */
    public void setAppendsOnWire(int appendsOnWire) {
        this.appendsOnWire = appendsOnWire;
    }

    /** How long a stop waits for the appends still waiting to be written (default 30 s). */
    public void setStopDrainMs(long stopDrainMs) {
        this.stopDrainMs = stopDrainMs;
    }

    public long getStopDrainMs() {
        return stopDrainMs;
    }

    /** How often the journal's mark follows what the broker no longer needs (0: only at checkpoint). */
    public void setReclaimIntervalMs(long reclaimIntervalMs) {
        this.reclaimIntervalMs = reclaimIntervalMs;
    }

    /**
     * Whether an add not yet sent when its message is acknowledged (outside
     * a transaction) is withdrawn: neither it nor the acknowledgement is
     * written, and the send is answered (KahaDB's default with
     * concurrentStoreAndDispatchQueues). False: both are written.
     */
    public void setCancelConsumedAdds(boolean cancelConsumedAdds) {
        this.cancelConsumedAdds = cancelConsumedAdds;
    }

    boolean cancelConsumedAdds() {
        return cancelConsumedAdds;
    }

    /**
     * A transaction outcome (a local commit, an XA prepare, an XA commit)
     * whose records total more than this is written ahead in batches of at
     * most this size and made to count by one COMMIT record; smaller ones
     * are one batch. Keep it at most half the appliance's
     * {@code limits.max_batch_bytes}.
     */
    public void setStageAboveBytes(int stageAboveBytes) {
        this.stageAboveBytes = Math.max(1, stageAboveBytes);
    }

    /** This broker's writer epoch (0 before start). */
    public long getWriterEpoch() {
        Link l = link;
        return l == null ? 0 : l.writer;
    }

    @Override
    public String toString() {
        return "MirrorlogPersistenceAdapter[" + endpoints + " journal=" + journal + " durability=" + durability + "]";
    }
}
