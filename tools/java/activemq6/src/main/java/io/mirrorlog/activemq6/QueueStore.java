package io.mirrorlog.activemq6;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageAck;
import org.apache.activemq.command.MessageId;
import org.apache.activemq.store.AbstractMessageStore;
import org.apache.activemq.store.IndexListener;
import org.apache.activemq.store.ListenableFuture;
import org.apache.activemq.store.MessageRecoveryListener;

/**
 * A queue's messages: an ordered index of entries (sequence, priority, the
 * LSN of the ADD record) rebuilt from the journal at start; bodies are read
 * back by LSN when a cursor asks.
 *
 * <p>The cursor contract (docs/activemq.md): a message's sequence is
 * assigned, its record handed to the appliance and {@code onAdd} called
 * under the adapter's lock, so sequence order, journal order and the
 * cursor's order agree; an entry stays {@code pendingAdd} (and
 * {@code recoverNextMessages} stops before it) until its record is durable
 * and the cursor took it; {@code setBatch} positions exactly after the
 * message named; a second add of a message id is ignored.
 *
 * <p>Invariant: every index change happens under {@code a.lock}.
 */
class QueueStore extends AbstractMessageStore {
    final MirrorlogPersistenceAdapter a;
    final TreeMap<Long, Entry> bySeq = new TreeMap<>();
    final Map<MessageId, Entry> byId = new HashMap<>();
    final TreeSet<Long> pendingAdds = new TreeSet<>();
    /** The cursor's position: what recoverNextMessages handed out last. */
    final Position pos = new Position();

    QueueStore(MirrorlogPersistenceAdapter a, ActiveMQDestination destination) {
        super(destination);
        this.a = a;
    }

    // ---------------------------------------------------------------- adds

    @Override
    public void addMessage(ConnectionContext context, Message message) throws IOException {
        add(context, message, true);
    }

    @Override
    public void addMessage(ConnectionContext context, Message message, boolean canOptimizeHint) throws IOException {
        add(context, message, true);
    }

    @Override
    public ListenableFuture<Object> asyncAddQueueMessage(ConnectionContext context, Message message)
            throws IOException {
        return add(context, message, false);
    }

    @Override
    public ListenableFuture<Object> asyncAddQueueMessage(ConnectionContext context, Message message,
            boolean canOptimizeHint) throws IOException {
        return add(context, message, false);
    }

    /**
     * A topic message is written before it is dispatched (returns once
     * durable), as KahaDB does by default (concurrentStoreAndDispatchTopics
     * off): a durable subscriber has it in its store-backed cursor only
     * once it is in the store.
     */
    @Override
    public ListenableFuture<Object> asyncAddTopicMessage(ConnectionContext context, Message message)
            throws IOException {
        return add(context, message, true);
    }

    @Override
    public ListenableFuture<Object> asyncAddTopicMessage(ConnectionContext context, Message message,
            boolean canOptimizeHint) throws IOException {
        return add(context, message, true);
    }

    /** Called under the lock when an entry joins (topics give it to their subscriptions). */
    void added(Entry e) {
    }

    /**
     * Adds a message. {@code sync}: returns once its record is durable (and
     * then publishes its sequence); else the sequence is replaced by a future
     * at once (the cursor may dispatch it while it is written, as KahaDB's
     * concurrent store and dispatch) and the returned future completes once
     * durable. In a transaction's batch the record waits for the commit.
     */
    ListenableFuture<Object> add(ConnectionContext context, Message message, boolean sync) throws IOException {
        a.check();
        MessageId id = message.getMessageId();
        Batch batch = a.batch();
        // An async add's record is encoded when it is sent (by the link's
        // sender): one acknowledged before that is withdrawn unencoded, as
        // KahaDB marshals in its store task, which a cancel skips.
        boolean lazy = !sync && batch == null;
        byte[] record = lazy ? null : a.encodeAdd(destination, message);
        StoreFuture done = new StoreFuture();
        CompletableFuture<Long> written = null;
        Entry e;
        synchronized (a.lock) {
            Entry dup = byId.get(id);
            if (dup != null) {
                // A duplicate (a producer's resend after a failover): ignored,
                // and the queue told so (-1) rather than dispatching it twice;
                // acknowledged once the original is durable.
                id.setFutureOrSequenceLong(-1L);
                if (dup.written == null) {
                    done.f.complete(null);
                } else {
                    dup.written.whenComplete((v, err) -> {
                        // Cancelled: the original was consumed before it was written.
                        if (err != null && !(err instanceof CancellationException)) {
                            done.f.completeExceptionally(MirrorlogPersistenceAdapter.cause(err));
                        } else {
                            done.f.complete(null);
                        }
                    });
                }
                return done;
            }
            if (batch != null && batch.preparing != null) {
                // An XA prepare: the add is recorded, and applied only at commit.
                batch.add(record, null, null);
                done.f.complete(null);
                return done;
            }
            e = new Entry(a.nextSeq++, id, message.getPriority(), message.getSize(), a.link().ackedEnd());
            e.inFlight = message;
            e.pendingAdd = true;
            index(e);
            a.producerSeen(id);
            final Entry fe = e;
            if (batch != null) {
                id.setFutureOrSequenceLong(null);
                boolean viaCursor = !batch.recovered && indexListener != null;
                batch.add(record, lsn -> durable(fe, lsn, viaCursor), () -> failed(fe));
                if (viaCursor) {
                    listen(context, message, fe);
                }
                done.f.complete(null);
                return done;
            }
            written = lazy
                    ? a.link().appendLazy(() -> a.encodeAdd(destination, message), message.getSize())
                    : a.link().append(Link.one(record));
            e.written = written;
            e.async = !sync;
            if (sync) {
                id.setFutureOrSequenceLong(null);
                listen(context, message, e);
            } else {
                id.setFutureOrSequenceLong(done);
                if (indexListener != null) {
                    indexListener.onAdd(new IndexListener.MessageContext(context, message, null));
                }
            }
        }
        final Entry fe = e;
        if (sync) {
            long lsn;
            try {
                lsn = MirrorlogPersistenceAdapter.await(written);
            } catch (IOException ex) {
                failed(fe);
                throw ex;
            }
            durable(fe, lsn, true);
            done.f.complete(null);
        } else {
            written.whenComplete((lsn, err) -> {
                if (err instanceof CancellationException) {
                    // Withdrawn: acknowledged before it was sent (see remove).
                    done.f.cancel(false);
                } else if (err != null) {
                    failed(fe);
                    done.f.completeExceptionally(MirrorlogPersistenceAdapter.cause(err));
                } else {
                    durable(fe, lsn, false);
                    done.f.complete(null);
                }
            });
        }
        return done;
    }

    /** Tells the queue of a new message; it leaves pendingAdd once the cursor took it. */
    private void listen(ConnectionContext context, Message message, Entry e) {
        if (indexListener != null) {
            indexListener.onAdd(new IndexListener.MessageContext(context, message, () -> cursorTook(e)));
        }
    }

    private void cursorTook(Entry e) {
        synchronized (a.lock) {
            e.pendingAdd = false;
            if (e.lsn >= 0) {
                pendingAdds.remove(e.seq); // else durable later: taken out then
            }
        }
    }

    /** The add's record is durable at {@code lsn}. {@code waitCursor}: it leaves pendingAdd when the cursor took it. */
    void durable(Entry e, long lsn, boolean waitCursor) {
        synchronized (a.lock) {
            e.lsn = Math.max(e.lsn, lsn); // an update may have been durable first
            e.pin = lsn;
            e.inFlight = null;
            e.written = null;
            if (!waitCursor || indexListener == null || !e.pendingAdd) {
                e.pendingAdd = false;
                pendingAdds.remove(e.seq);
            }
            e.id.setFutureOrSequenceLong(e.seq);
        }
    }

    void failed(Entry e) {
        synchronized (a.lock) {
            if (byId.get(e.id) == e) {
                unindex(e);
            }
        }
    }

    /** Puts an entry in the index (under the lock). */
    void index(Entry e) {
        bySeq.put(e.seq, e);
        byId.put(e.id, e);
        if (e.pendingAdd) {
            pendingAdds.add(e.seq);
        }
        count(e, 1);
        added(e);
    }

    /** Takes an entry out of the index (under the lock). */
    void unindex(Entry e) {
        bySeq.remove(e.seq);
        byId.remove(e.id);
        pendingAdds.remove(e.seq);
        if (!e.preparedAck) {
            count(e, -1);
        }
    }

    /** Counts an entry in (+1) or out (-1) of the store's statistics (hidden entries are not counted). */
    private void count(Entry e, int sign) {
        getMessageStoreStatistics().getMessageCount().add(sign);
        getMessageStoreStatistics().getMessageSize().addSize(sign * (long) e.size);
    }

    /**
     * An acknowledgement by a transaction that came back prepared after a
     * restart hides its message (not dispatched, not counted: the queue's
     * size leaves it out, as KahaDB's) until the outcome; {@code hidden}
     * false shows it again (under the lock).
     */
    void hide(Entry e, boolean hidden) {
        if (e.preparedAck == hidden) {
            return;
        }
        e.preparedAck = hidden;
        if (byId.get(e.id) == e) {
            count(e, hidden ? -1 : 1);
        }
    }

    // ------------------------------------------------------------- removes

    @Override
    public void removeMessage(ConnectionContext context, MessageAck ack) throws IOException {
        remove(ack, ack.isResponseRequired());
    }

    @Override
    public void removeAsyncMessage(ConnectionContext context, MessageAck ack) throws IOException {
        remove(ack, false);
    }

    private void remove(MessageAck ack, boolean sync) throws IOException {
        a.check();
        MessageId id = ack.getLastMessageId();
        Batch batch = a.batch();
        CompletableFuture<Long> written = null;
        CompletableFuture<Long> withdrawn = null;
        synchronized (a.lock) {
            Entry e = byId.get(id);
            if (e == null) {
                return;
            }
            if (!sync && batch == null && e.async && e.written != null && a.cancelConsumedAdds()
                    && a.link().withdraw(e.written)) {
                // Acknowledged before its add was sent: neither is written
                // (the send is answered once the consumer acknowledged it).
                unindex(e);
                withdrawn = e.written;
                e.written = null;
                e.inFlight = null;
            } else {
                byte[] record = Codec.remove(destination, id.toProducerKey());
                if (batch != null) {
                    if (batch.preparing != null) {
                        batch.add(record, null, null);
                    } else {
                        batch.add(record, lsn -> removed(e), null);
                    }
                    return;
                }
                unindex(e);
                written = a.link().append(Link.one(record));
            }
        }
        if (withdrawn != null) {
            // Outside the lock: this runs the add's callbacks (its send is answered).
            withdrawn.cancel(false);
            return;
        }
        if (sync) {
            MirrorlogPersistenceAdapter.await(written);
        } else {
            a.pipelined(written);
        }
    }

    private void removed(Entry e) {
        synchronized (a.lock) {
            if (byId.get(e.id) == e) {
                unindex(e);
            }
        }
    }

    @Override
    public void removeAllMessages(ConnectionContext context) throws IOException {
        a.check();
        CompletableFuture<Long> written;
        synchronized (a.lock) {
            written = a.link().append(Link.one(Codec.purge(destination)));
            clear();
        }
        MirrorlogPersistenceAdapter.await(written);
    }

    /** Drops every entry (under the lock). */
    void clear() {
        for (Entry e : new ArrayList<>(bySeq.values())) {
            unindex(e);
        }
        pos.reset();
    }

    // ------------------------------------------------------------ recovery

    @Override
    public Message getMessage(MessageId identity) throws IOException {
        Entry e;
        synchronized (a.lock) {
            e = byId.get(identity);
            if (e == null) {
                return null;
            }
            if (e.inFlight != null) {
                return e.inFlight;
            }
        }
        return a.load(e);
    }

    @Override
    public void recover(MessageRecoveryListener listener) throws Exception {
        List<Entry> all;
        synchronized (a.lock) {
            all = select(bySeq, new Position(), Integer.MAX_VALUE);
        }
        deliver(all, listener, Integer.MAX_VALUE, null);
    }

    @Override
    public void recoverNextMessages(int maxReturned, MessageRecoveryListener listener) throws Exception {
        List<Entry> next;
        synchronized (a.lock) {
            next = select(bySeq, pos, maxReturned);
        }
        deliver(next, listener, maxReturned, e -> {
            synchronized (a.lock) {
                pos.delivered(e, prioritizedMessages);
            }
        });
    }

    /**
     * Up to {@code max} entries of {@code from} after position {@code p}, in
     * the order a cursor takes them (by sequence; with prioritized messages
     * highest priority first), stopping before the first pending add (never
     * read past a message the cursor has not got), leaving out messages
     * acknowledged by a prepared transaction (under the lock).
     */
    List<Entry> select(NavigableMap<Long, Entry> from, Position p, int max) {
        long stop = pendingAdds.isEmpty() ? Long.MAX_VALUE : pendingAdds.first();
        boolean prio = prioritizedMessages;
        List<Entry> out = new ArrayList<>();
        if (!prio) {
            for (Entry e : from.tailMap(p.lowest(false), false).values()) {
                if (e.seq >= stop || out.size() >= max) {
                    break;
                }
                if (!e.preparedAck) {
                    out.add(e);
                }
            }
            return out;
        }
        List<List<Entry>> byPrio = new ArrayList<>(10);
        for (int s = 0; s < 10; s++) {
            byPrio.add(null);
        }
        for (Entry e : from.tailMap(p.lowest(true), false).values()) {
            if (e.seq >= stop) {
                break;
            }
            int s = Position.slot(e);
            if (e.preparedAck || !p.after(e, true)) {
                continue;
            }
            if (byPrio.get(s) == null) {
                byPrio.set(s, new ArrayList<>());
            }
            if (byPrio.get(s).size() < max) {
                byPrio.get(s).add(e);
            }
        }
        for (int s = 9; s >= 0 && out.size() < max; s--) {
            if (byPrio.get(s) != null) {
                for (Entry e : byPrio.get(s)) {
                    if (out.size() >= max) {
                        break;
                    }
                    out.add(e);
                }
            }
        }
        return out;
    }

    interface Delivered {
        void accept(Entry e);
    }

    /** Reads the bodies (pipelined) and hands them to the listener in order while it has room. */
    void deliver(List<Entry> entries, MessageRecoveryListener listener, int max, Delivered delivered)
            throws Exception {
        List<CompletableFuture<Message>> bodies = new ArrayList<>(entries.size());
        for (Entry e : entries) {
            bodies.add(a.loadAsync(e));
        }
        int n = 0;
        for (int i = 0; i < entries.size(); i++) {
            if (!listener.canRecoveryNextMessage()) {
                break;
            }
            Message m = MirrorlogPersistenceAdapter.await(bodies.get(i));
            Entry e = entries.get(i);
            m.getMessageId().setFutureOrSequenceLong(e.seq);
            m.getMessageId().setEntryLocator(e.seq);
            listener.recoverMessage(m);
            if (delivered != null) {
                delivered.accept(e);
            }
            n++;
            if (n >= max || !listener.hasSpace()) {
                break;
            }
        }
    }

    @Override
    public void resetBatching() {
        synchronized (a.lock) {
            pos.reset();
        }
    }

    @Override
    public void setBatch(MessageId messageId) {
        synchronized (a.lock) {
            Entry e = byId.get(messageId);
            if (e != null) {
                pos.setAt(e, prioritizedMessages);
            } else if (messageId.getFutureOrSequenceLong() instanceof Long && !prioritizedMessages) {
                // Already acknowledged: its sequence still says where it stood.
                pos.setAt((Long) messageId.getFutureOrSequenceLong(), 0, false);
            }
        }
    }

    @Override
    public void updateMessage(Message message) throws IOException {
        // persistJMSRedelivered: the message written again under its id; the
        // newest ADD of an id is the one read back (and replayed). The pin
        // stays at the first ADD: replay places a message where its first
        // ADD lies, so reclaiming that record would move the message behind
        // the ones added after it.
        a.check();
        byte[] record = a.encodeAdd(destination, message);
        CompletableFuture<Long> written;
        synchronized (a.lock) {
            Entry e = byId.get(message.getMessageId());
            if (e == null) {
                return;
            }
            written = a.link().append(Link.one(record));
        }
        long lsn = MirrorlogPersistenceAdapter.await(written);
        synchronized (a.lock) {
            Entry e = byId.get(message.getMessageId());
            if (e != null && lsn > e.lsn) {
                e.lsn = lsn;
                assert e.pin < lsn : "an entry's pin lies at or below its first ADD";
            }
        }
    }

    @Override
    protected void recoverMessageStoreStatistics() throws IOException {
        synchronized (a.lock) {
            getMessageStoreStatistics().reset();
            for (Entry e : bySeq.values()) {
                if (!e.preparedAck) {
                    count(e, 1);
                }
            }
        }
    }

    @Override
    public StoreType getType() {
        // Not KAHADB: the broker calls recoverExpired only on KahaDB stores.
        return StoreType.MEMORY;
    }

    /** The lowest LSN this destination still needs (Long.MAX_VALUE: none), under the lock. */
    long lowestLsn() {
        long low = Long.MAX_VALUE;
        for (Entry e : bySeq.values()) {
            low = Math.min(low, e.pin);
        }
        return low;
    }

    @Override
    public String toString() {
        return "mirrorlog:" + destination;
    }
}
