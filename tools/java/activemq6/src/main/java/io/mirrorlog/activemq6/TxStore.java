package io.mirrorlog.activemq6;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ConnectionId;
import org.apache.activemq.command.ConsumerId;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageAck;
import org.apache.activemq.command.MessageId;
import org.apache.activemq.command.SessionId;
import org.apache.activemq.command.TransactionId;
import org.apache.activemq.command.XATransactionId;
import org.apache.activemq.store.ListenableFuture;
import org.apache.activemq.store.MessageStore;
import org.apache.activemq.store.ProxyMessageStore;
import org.apache.activemq.store.ProxyTopicMessageStore;
import org.apache.activemq.store.TopicMessageStore;
import org.apache.activemq.store.memory.MemoryTransactionStore;

/**
 * Transactions: ActiveMQ's in-memory transaction store (which holds a
 * transaction's adds and acks until it ends) made durable where it must
 * be. A local commit is one batch of records (all durable or none); an XA
 * prepare writes the transaction's operations as PREPARED records (with
 * the bodies) before it returns, and its commit or rollback a COMMIT or
 * ROLLBACK record. An outcome larger than one batch is staged (see
 * MirrorlogPersistenceAdapter.commitStaged): still all or none. After a
 * restart the prepared transactions come back from the journal, and the
 * messages they acknowledged are kept out of dispatch until the outcome.
 */
final class TxStore extends MemoryTransactionStore {
    private final MirrorlogPersistenceAdapter a;
    /** Prepared transactions that came back from the journal at start. */
    private final java.util.Set<TransactionId> recoveredTxs = java.util.concurrent.ConcurrentHashMap.newKeySet();

    TxStore(MirrorlogPersistenceAdapter a, BrokerService brokerService) {
        super(a, brokerService);
        this.a = a;
    }

    /**
     * The store the broker uses: operations in a transaction go to
     * ActiveMQ's in-memory transaction store (held until the transaction
     * ends); every other one straight to the destination's store. The
     * in-memory store's own proxy would turn an async add or remove into a
     * sync one, so that a send would wait for its record before the queue
     * could dispatch it and an acknowledgement would hold the consumer's
     * connection until durable (no concurrent store and dispatch).
     */
    @Override
    public MessageStore proxy(MessageStore store) {
        MessageStore tx = super.proxy(store);
        return new ProxyMessageStore(tx) {
            @Override
            public void addMessage(ConnectionContext context, Message send) throws IOException {
                (send.getTransactionId() == null ? store : tx).addMessage(context, send);
            }

            @Override
            public void addMessage(ConnectionContext context, Message send, boolean canOptimize) throws IOException {
                (send.getTransactionId() == null ? store : tx).addMessage(context, send, canOptimize);
            }

            @Override
            public ListenableFuture<Object> asyncAddQueueMessage(ConnectionContext context, Message message)
                    throws IOException {
                return (message.getTransactionId() == null ? store : tx).asyncAddQueueMessage(context, message);
            }

            @Override
            public ListenableFuture<Object> asyncAddQueueMessage(ConnectionContext context, Message message,
                    boolean canOptimize) throws IOException {
                return (message.getTransactionId() == null ? store : tx).asyncAddQueueMessage(context, message,
                        canOptimize);
            }

            @Override
            public void removeMessage(ConnectionContext context, MessageAck ack) throws IOException {
                (ack.isInTransaction() ? tx : store).removeMessage(context, ack);
            }

            @Override
            public void removeAsyncMessage(ConnectionContext context, MessageAck ack) throws IOException {
                (ack.isInTransaction() ? tx : store).removeAsyncMessage(context, ack);
            }
        };
    }

    /** As {@link #proxy(MessageStore)}, for a topic. */
    @Override
    public TopicMessageStore proxy(TopicMessageStore store) {
        TopicMessageStore tx = super.proxy(store);
        return new ProxyTopicMessageStore(tx) {
            @Override
            public void addMessage(ConnectionContext context, Message send) throws IOException {
                (send.getTransactionId() == null ? store : tx).addMessage(context, send);
            }

            @Override
            public void addMessage(ConnectionContext context, Message send, boolean canOptimize) throws IOException {
                (send.getTransactionId() == null ? store : tx).addMessage(context, send, canOptimize);
            }

            @Override
            public ListenableFuture<Object> asyncAddTopicMessage(ConnectionContext context, Message message)
                    throws IOException {
                return (message.getTransactionId() == null ? store : tx).asyncAddTopicMessage(context, message);
            }

            @Override
            public ListenableFuture<Object> asyncAddTopicMessage(ConnectionContext context, Message message,
                    boolean canOptimize) throws IOException {
                return (message.getTransactionId() == null ? store : tx).asyncAddTopicMessage(context, message,
                        canOptimize);
            }
        };
    }

    @Override
    public void prepare(TransactionId txid) throws IOException {
        Tx tx = inflightTransactions.remove(txid);
        if (tx == null) {
            tx = new Tx(); // nothing done in it: the prepare is recorded all the same
        }
        ConnectionContext ctx = new ConnectionContext();
        ctx.setXid((XATransactionId) txid);
        a.beginTransaction(ctx);
        try {
            for (AddMessageCommand c : tx.messages) {
                c.run(ctx);
            }
            for (RemoveMessageCommand c : tx.acks) {
                c.run(ctx);
            }
            a.commitTransaction(ctx);
        } catch (IOException e) {
            a.rollbackTransaction(ctx);
            inflightTransactions.put(txid, tx);
            throw e;
        }
        preparedTransactions.put(txid, tx);
    }

    @Override
    public void commit(TransactionId txid, boolean wasPrepared, Runnable preCommit, Runnable postCommit)
            throws IOException {
        if (preCommit != null) {
            preCommit.run();
        }
        Tx tx = wasPrepared ? preparedTransactions.get(txid) : inflightTransactions.remove(txid);
        if (wasPrepared) {
            a.committing.set((XATransactionId) txid);
        }
        try {
            if (tx != null) {
                // One batch: the adds and acks, and for a prepared one its COMMIT.
                tx.commit();
            }
            if (wasPrepared && a.committing.get() != null) {
                a.committing.remove();
                a.writeOutcome(Codec.COMMIT, (XATransactionId) txid);
            }
        } finally {
            a.committing.remove();
        }
        if (wasPrepared) {
            preparedTransactions.remove(txid);
            recoveredTxs.remove(txid);
        }
        // Only once the commit is durable: the broker acknowledges the client here.
        if (postCommit != null) {
            postCommit.run();
        }
    }

    @Override
    public void rollback(TransactionId txid) throws IOException {
        inflightTransactions.remove(txid);
        if (preparedTransactions.containsKey(txid)) {
            a.writeOutcome(Codec.ROLLBACK, (XATransactionId) txid);
            preparedTransactions.remove(txid);
            recoveredTxs.remove(txid);
        }
    }

    boolean isRecovered(TransactionId txid) {
        return recoveredTxs.contains(txid);
    }

    /** After the journal was replayed: the prepared transactions it holds, as the broker recovers them. */
    void recovered(MirrorlogPersistenceAdapter adapter) throws IOException {
        List<MirrorlogPersistenceAdapter.Prepared> ps;
        synchronized (adapter.lock) {
            ps = new ArrayList<>(adapter.prepared.values());
        }
        for (MirrorlogPersistenceAdapter.Prepared p : ps) {
            Tx tx = getPreparedTx(p.xid);
            recoveredTxs.add(p.xid);
            for (Codec.Rec op : p.ops) {
                switch (op.type) {
                    case Codec.ADD:
                        tx.add(addCommand(adapter, op));
                        break;
                    case Codec.REMOVE:
                    case Codec.SUB_ACK:
                        tx.add(ackCommand(adapter, op, p.xid));
                        break;
                    default:
                        break;
                }
            }
        }
    }

    private AddMessageCommand addCommand(MirrorlogPersistenceAdapter adapter, Codec.Rec op) throws IOException {
        final Message m = (Message) adapter.unmarshal(op.wireVersion, op.body);
        final MessageStore[] store = new MessageStore[1];
        synchronized (adapter.lock) {
            store[0] = adapter.store(op.dest);
        }
        return new AddMessageCommand() {
            @Override
            public Message getMessage() {
                return m;
            }

            @Override
            public MessageStore getMessageStore() {
                return store[0];
            }

            @Override
            public void run(ConnectionContext ctx) throws IOException {
                store[0].addMessage(ctx, m);
            }

            @Override
            public void setMessageStore(MessageStore messageStore) {
                store[0] = messageStore;
            }
        };
    }

    private RemoveMessageCommand ackCommand(MirrorlogPersistenceAdapter adapter, Codec.Rec op, XATransactionId xid) {
        final MessageStore store;
        synchronized (adapter.lock) {
            store = adapter.store(op.dest);
        }
        MessageId id = a.messageId(op.messageId);
        final MessageAck ack = new MessageAck();
        ack.setAckType(MessageAck.STANDARD_ACK_TYPE);
        ack.setDestination(op.dest);
        ack.setFirstMessageId(id);
        ack.setLastMessageId(id);
        ack.setMessageCount(1);
        ack.setTransactionId(xid);
        if (op.type == Codec.SUB_ACK) {
            // As KahaDB recovers it: the consumer's connection id names the subscription.
            ack.setConsumerId(new ConsumerId(new SessionId(new ConnectionId(op.clientId + ":" + op.subName), 0), 0));
        }
        final String clientId = op.clientId;
        final String subName = op.subName;
        final boolean topic = op.type == Codec.SUB_ACK;
        return new RemoveMessageCommand() {
            @Override
            public MessageAck getMessageAck() {
                return ack;
            }

            @Override
            public void run(ConnectionContext ctx) throws IOException {
                if (topic) {
                    ((TopicMessageStore) store).acknowledge(ctx, clientId, subName, id, ack);
                } else {
                    store.removeMessage(ctx, ack);
                }
            }

            @Override
            public MessageStore getMessageStore() {
                return store;
            }
        };
    }
}
