package io.mirrorlog.activemq;

import org.apache.activemq.store.jdbc.JDBCPersistenceAdapter;

/**
 * The JDBC long-term store for use under ActiveMQ's JournalPersistenceAdapter.
 *
 * <p>Stock 5.17.2 loads the store's last message sequence id only when the
 * broker asks for it, which is after the journal has been replayed into the
 * store. The replay therefore numbers messages from 0, collides with rows
 * already in the store, and each collision is logged as a warning and the
 * message dropped. Loading the last sequence id when the store starts, before
 * the replay, fixes it.
 */
public class SequenceSafeJDBCPersistenceAdapter extends JDBCPersistenceAdapter {
    @Override
    public void doStart() throws Exception {
        super.doStart();
        // Sets the sequence generator to the newest id in the store.
        getLastMessageBrokerSequenceId();
    }
}
