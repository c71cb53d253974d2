package io.mirrorlog.activemq6;

import io.mirrorlog.client.MirrorlogClient;
import io.mirrorlog.client.MirrorlogException;
import io.mirrorlog.client.Wire;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
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
 */
final class Link {
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

    Link(MirrorlogClient client, String journal, int durability, int maxFrameBytes, byte[] header,
            Consumer<IOException> onFenced) throws IOException {
        this.client = client;
        this.journal = journal;
        this.durability = durability;
        this.maxFrameBytes = maxFrameBytes;
        this.onFenced = onFenced;
        client.createJournal(journal);
        long[] c = MirrorlogClient.await(client.claim(journal, durability, header));
        this.writer = c[0];
        this.claimLsn = c[1];
        ackedEnd.set(claimLsn + 1);
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
     */
    CompletableFuture<Long> append(List<byte[]> records) {
        IOException e = fenced.get();
        if (e != null) {
            return CompletableFuture.failedFuture(e);
        }
        int n = records.size();
        return client.appendAs(journal, durability, writer, records).handle((lsn, err) -> {
            if (err != null) {
                Throwable c = err instanceof CompletionException && err.getCause() != null ? err.getCause() : err;
                if (c instanceof MirrorlogException && ((MirrorlogException) c).code() == Wire.E_WRITER_FENCED) {
                    IOException f = new IOException("this broker was fenced: another broker claimed mirrorlog journal '"
                            + journal + "' (" + ((MirrorlogException) c).detail() + ")", c);
                    if (fenced.compareAndSet(null, f)) {
                        onFenced.accept(f);
                    }
                    throw new CompletionException(f);
                }
                throw new CompletionException(c);
            }
            ackedEnd.accumulateAndGet(lsn + n, Math::max);
            return lsn;
        });
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

    void close() {
        client.close(2000);
    }

    static List<byte[]> one(byte[] r) {
        List<byte[]> l = new ArrayList<>(1);
        l.add(r);
        return l;
    }
}
