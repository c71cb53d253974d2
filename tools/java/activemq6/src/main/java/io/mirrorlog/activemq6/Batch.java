package io.mirrorlog.activemq6;

import java.util.ArrayList;
import java.util.List;
import java.util.function.LongConsumer;

/**
 * The records of one transaction outcome (a local commit, an XA prepare or
 * commit), appended together in one batch: all durable or none. Each
 * record's effect on the index runs once the batch is durable, with the
 * record's LSN; if the append fails, the undo steps run instead.
 */
final class Batch {
    /** The XA transaction being prepared (its operations are recorded, not applied), or null. */
    final byte[] preparing;
    /**
     * The commit of a transaction recovered prepared after a restart: no
     * cursor waits for its adds (the broker re-reads the store after it),
     * so they are visible as soon as they are durable.
     */
    boolean recovered;
    final List<byte[]> records = new ArrayList<>();
    private final List<LongConsumer> durable = new ArrayList<>();
    private final List<Runnable> failed = new ArrayList<>();

    Batch(byte[] preparing) {
        this.preparing = preparing;
    }

    /** Adds a record; {@code onDurable} gets its LSN once the batch is durable. */
    void add(byte[] record, LongConsumer onDurable, Runnable onFailed) {
        if (preparing != null) {
            record = Codec.prepared(preparing, record);
        }
        records.add(record);
        durable.add(onDurable);
        failed.add(onFailed);
    }

    /** Adds a record as it is, with no effect on the index (an XA prepare's PREPARE). */
    void addPlain(byte[] record) {
        records.add(record);
        durable.add(null);
        failed.add(null);
    }

    void durable(long firstLsn) {
        // Invariant: one callback slot per record, so record i lies at firstLsn + i.
        assert durable.size() == records.size() : durable.size() + " callbacks for " + records.size() + " records";
        for (int i = 0; i < durable.size(); i++) {
            if (durable.get(i) != null) {
                durable.get(i).accept(firstLsn + i);
            }
        }
    }

    /** As {@link #durable}, each record at its own LSN (a batch written in parts). */
    void durableAt(long[] lsns) {
        assert durable.size() == records.size() && lsns.length == records.size();
        for (int i = 0; i < durable.size(); i++) {
            if (durable.get(i) != null) {
                durable.get(i).accept(lsns[i]);
            }
        }
    }

    void failed() {
        for (Runnable r : failed) {
            if (r != null) {
                r.run();
            }
        }
    }
}
