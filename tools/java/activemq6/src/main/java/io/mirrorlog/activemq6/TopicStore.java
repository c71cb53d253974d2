package io.mirrorlog.activemq6;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageAck;
import org.apache.activemq.command.MessageId;
import org.apache.activemq.command.SubscriptionInfo;
import org.apache.activemq.store.MessageRecoveryListener;
import org.apache.activemq.store.MessageStoreSubscriptionStatistics;
import org.apache.activemq.store.TopicMessageStore;
import org.apache.activemq.util.SubscriptionKey;

/**
 * A topic's durable subscriptions and the messages they still need. Each
 * subscription holds the sequences it has not acknowledged (acknowledged in
 * any order, UNMATCHED acks too); a message leaves the index once no
 * subscription needs it. A subscription's creation record pins the journal
 * (the mark stays at or below it) while it lives.
 */
final class TopicStore extends QueueStore implements TopicMessageStore {
    static final class Sub {
        SubscriptionInfo info;
        /** Sequences not yet acknowledged, in order. */
        final TreeMap<Long, Entry> pending = new TreeMap<>();
        /**
         * Acknowledged by a transaction that came back prepared after a
         * restart: neither dispatched nor counted until its outcome, and
         * given back on rollback.
         */
        final TreeMap<Long, Entry> hidden = new TreeMap<>();
        final Position pos = new Position();
        long size;
        /**
         * The lowest LSN it needs: its creation record's (a bound below it,
         * `Link.ackedEnd`, while that record is in flight), as `Entry.pin`.
         */
        long pin;

        Sub(SubscriptionInfo info, long pin) {
            this.info = info;
            this.pin = pin;
        }
    }

    final Map<SubscriptionKey, Sub> subs = new LinkedHashMap<>();
    private final MessageStoreSubscriptionStatistics subStats = new MessageStoreSubscriptionStatistics(false);

    TopicStore(MirrorlogPersistenceAdapter a, ActiveMQDestination destination) {
        super(a, destination);
    }

    @Override
    void added(Entry e) {
        for (Sub s : subs.values()) {
            give(s, e);
        }
    }

    private static void give(Sub s, Entry e) {
        if (s.pending.put(e.seq, e) == null) {
            e.refs++;
            s.size += e.size;
        }
    }

    /** The subscription no longer needs the entry; the entry leaves once none does (under the lock). */
    private void release(Sub s, Entry e) {
        boolean held = s.pending.remove(e.seq) != null;
        if (held) {
            s.size -= e.size;
        }
        if (held || s.hidden.remove(e.seq) != null) {
            e.refs--;
            if (e.refs <= 0 && byId.get(e.id) == e) {
                unindex(e);
            }
        }
    }

    @Override
    void durable(Entry e, long lsn, boolean waitCursor) {
        super.durable(e, lsn, waitCursor);
        synchronized (a.lock) {
            // Written while no subscription wanted it: nothing keeps it.
            if (e.refs <= 0 && byId.get(e.id) == e) {
                unindex(e);
            }
        }
    }

    @Override
    public void acknowledge(ConnectionContext context, String clientId, String subscriptionName, MessageId messageId,
            MessageAck ack) throws IOException {
        a.check();
        SubscriptionKey key = new SubscriptionKey(clientId, subscriptionName);
        Batch batch = a.batch();
        CompletableFuture<Long> written;
        synchronized (a.lock) {
            Sub s = subs.get(key);
            Entry e = byId.get(messageId);
            if (s == null || e == null || !s.pending.containsKey(e.seq) && !s.hidden.containsKey(e.seq)) {
                return;
            }
            byte[] record = Codec.subAck(destination, clientId, subscriptionName, messageId.toProducerKey());
            if (batch != null) {
                if (batch.preparing != null) {
                    batch.add(record, null, null);
                } else {
                    batch.add(record, lsn -> acked(key, e), null);
                }
                return;
            }
            release(s, e);
            written = a.link().append(Link.one(record));
        }
        if (ack != null && ack.isResponseRequired()) {
            MirrorlogPersistenceAdapter.await(written);
        } else {
            a.pipelined(written);
        }
    }

    private void acked(SubscriptionKey key, Entry e) {
        synchronized (a.lock) {
            Sub s = subs.get(key);
            if (s != null) {
                release(s, e);
            }
        }
    }

    @Override
    public void addSubscription(SubscriptionInfo info, boolean retroactive) throws IOException {
        a.check();
        SubscriptionKey key = new SubscriptionKey(info);
        byte[] record = Codec.subAdd(destination, info.getClientId(), info.getSubscriptionName(), retroactive,
                a.wireVersion(), a.marshal(info));
        CompletableFuture<Long> written;
        Sub s;
        synchronized (a.lock) {
            s = subs.get(key);
            if (s != null) {
                s.info = info; // changed (selector, noLocal): its messages stay
            } else {
                s = new Sub(info, a.link().ackedEnd());
                subs.put(key, s);
                if (retroactive) {
                    for (Entry e : bySeq.values()) {
                        give(s, e);
                    }
                }
            }
            written = a.link().append(Link.one(record));
        }
        MirrorlogPersistenceAdapter.await(written);
    }

    @Override
    public void deleteSubscription(String clientId, String subscriptionName) throws IOException {
        a.check();
        SubscriptionKey key = new SubscriptionKey(clientId, subscriptionName);
        CompletableFuture<Long> written;
        synchronized (a.lock) {
            Sub s = subs.remove(key);
            if (s == null) {
                return;
            }
            releaseAll(s);
            written = a.link().append(Link.one(Codec.subDel(destination, clientId, subscriptionName)));
        }
        MirrorlogPersistenceAdapter.await(written);
    }

    @Override
    public SubscriptionInfo lookupSubscription(String clientId, String subscriptionName) {
        synchronized (a.lock) {
            Sub s = subs.get(new SubscriptionKey(clientId, subscriptionName));
            return s == null ? null : s.info;
        }
    }

    @Override
    public SubscriptionInfo[] getAllSubscriptions() {
        synchronized (a.lock) {
            List<SubscriptionInfo> l = new ArrayList<>();
            for (Sub s : subs.values()) {
                l.add(s.info);
            }
            return l.toArray(new SubscriptionInfo[0]);
        }
    }

    @Override
    public void recoverSubscription(String clientId, String subscriptionName, MessageRecoveryListener listener)
            throws Exception {
        List<Entry> all;
        synchronized (a.lock) {
            Sub s = subs.get(new SubscriptionKey(clientId, subscriptionName));
            if (s == null) {
                return;
            }
            all = select(s.pending, new Position(), Integer.MAX_VALUE);
        }
        deliver(all, listener, Integer.MAX_VALUE, null);
    }

    @Override
    public void recoverNextMessages(String clientId, String subscriptionName, int maxReturned,
            MessageRecoveryListener listener) throws Exception {
        SubscriptionKey key = new SubscriptionKey(clientId, subscriptionName);
        List<Entry> next;
        synchronized (a.lock) {
            Sub s = subs.get(key);
            if (s == null) {
                return;
            }
            next = select(s.pending, s.pos, maxReturned);
        }
        deliver(next, listener, maxReturned, e -> {
            synchronized (a.lock) {
                Sub s = subs.get(key);
                if (s != null) {
                    s.pos.delivered(e, prioritizedMessages);
                }
            }
        });
    }

    @Override
    public void resetBatching(String clientId, String subscriptionName) {
        synchronized (a.lock) {
            Sub s = subs.get(new SubscriptionKey(clientId, subscriptionName));
            if (s != null) {
                s.pos.reset();
            }
        }
    }

    @Override
    public int getMessageCount(String clientId, String subscriberName) {
        synchronized (a.lock) {
            Sub s = subs.get(new SubscriptionKey(clientId, subscriberName));
            return s == null ? 0 : s.pending.size();
        }
    }

    @Override
    public long getMessageSize(String clientId, String subscriberName) {
        synchronized (a.lock) {
            Sub s = subs.get(new SubscriptionKey(clientId, subscriberName));
            return s == null ? 0 : s.size;
        }
    }

    @Override
    public MessageStoreSubscriptionStatistics getMessageStoreSubStatistics() {
        return subStats;
    }

    @Override
    public Map<SubscriptionKey, List<Message>> recoverExpired(Set<SubscriptionKey> keys, int maxBrowse,
            MessageRecoveryListener listener) {
        // Called only for KahaDB stores (Topic.java); getType() is not KAHADB.
        throw new UnsupportedOperationException("recoverExpired is a KahaDB store operation");
    }

    @Override
    void clear() {
        super.clear();
        for (Sub s : subs.values()) {
            s.pending.clear();
            s.hidden.clear();
            s.size = 0;
            s.pos.reset();
        }
    }

    @Override
    long lowestLsn() {
        long low = super.lowestLsn();
        for (Sub s : subs.values()) {
            low = Math.min(low, s.pin);
        }
        return low;
    }

    /** Replay: a subscription as the journal says (under the lock). */
    void replaySub(SubscriptionKey key, SubscriptionInfo info, boolean retroactive, long lsn) {
        Sub s = subs.get(key);
        if (s != null) {
            s.info = info;
            return;
        }
        s = new Sub(info, lsn);
        subs.put(key, s);
        if (retroactive) {
            for (Entry e : bySeq.values()) {
                give(s, e);
            }
        }
    }

    void replaySubDel(SubscriptionKey key) {
        Sub s = subs.remove(key);
        if (s != null) {
            releaseAll(s);
        }
    }

    /** Replay: an acknowledgement. */
    void replayAck(SubscriptionKey key, MessageId id) {
        Sub s = subs.get(key);
        Entry e = byId.get(id);
        if (s != null && e != null) {
            release(s, e);
        }
    }

    /**
     * An acknowledgement by a prepared transaction hides the message from
     * that subscription only (not dispatched, not counted) until the
     * outcome; {@code hidden} false gives it back (under the lock).
     */
    void hide(SubscriptionKey key, MessageId id, boolean hidden) {
        Sub s = subs.get(key);
        Entry e = byId.get(id);
        if (s == null || e == null) {
            return;
        }
        if (hidden && s.pending.remove(e.seq) != null) {
            s.hidden.put(e.seq, e);
            s.size -= e.size;
        } else if (!hidden && s.hidden.remove(e.seq) != null) {
            s.pending.put(e.seq, e);
            s.size += e.size;
        }
    }

    private void releaseAll(Sub s) {
        for (Entry e : new ArrayList<>(s.pending.values())) {
            release(s, e);
        }
        for (Entry e : new ArrayList<>(s.hidden.values())) {
            release(s, e);
        }
    }
}
