package io.mirrorlog.activemq6;

import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageId;

/** One message held by a destination's index; its body stays in the journal. */
final class Entry {
    /** Order in the destination: assigned under the adapter's lock, in append order. */
    final long seq;
    final MessageId id;
    final int priority;
    final int size;
    /** The ADD record's LSN; -1 until it is durable. */
    long lsn = -1;
    /**
     * The lowest LSN this entry may need (the mark must stay at or below
     * it): from the moment its record is handed over, a bound below that
     * record's LSN (`Link.ackedEnd` then: every record placed later lies
     * at or above it); its LSN once durable.
     */
    long pin;
    /** Its record's append while in flight (a duplicate add waits for it). */
    java.util.concurrent.CompletableFuture<Long> written;
    /** The message until its record is durable (the cursor may ask for it before). */
    Message inFlight;
    /** Added by an async add (concurrent store and dispatch): only such an add may be withdrawn. */
    boolean async;
    /** Not yet visible to recoverNextMessages: its add is not durable, or not yet in the cursor. */
    boolean pendingAdd;
    /** Topic: subscriptions that have not acknowledged it. */
    int refs;
    /**
     * Queue: acknowledged by a prepared transaction (after a restart): not
     * dispatched nor counted until its outcome (topics hide per subscription).
     */
    boolean preparedAck;

    Entry(long seq, MessageId id, int priority, int size, long pin) {
        this.seq = seq;
        this.id = id;
        this.priority = priority;
        this.size = size;
        this.pin = pin;
    }
}
