package io.mirrorlog.activemq;

import java.io.IOException;
import java.util.concurrent.CompletableFuture;
import io.mirrorlog.client.MirrorlogClient;
import org.apache.activeio.journal.RecordLocation;

/**
 * A record's place in a mirrorlog journal: its LSN.
 *
 * <p>An unsynced write returns before the daemon has answered, so its LSN is
 * not known yet: the location holds the pending answer and resolves it the
 * first time it is compared. Equality and hash are by identity (every write
 * makes one location; the broker keeps them in hash sets before they resolve),
 * ordering is by LSN.
 */
public final class MirrorlogLocation implements RecordLocation {
    private final CompletableFuture<Long> lsn;

    MirrorlogLocation(CompletableFuture<Long> lsn) {
        this.lsn = lsn;
    }

    static MirrorlogLocation of(long lsn) {
        return new MirrorlogLocation(CompletableFuture.completedFuture(lsn));
    }

    /**
     * Waits for the daemon's answer; throws the append's error if it failed.
     * The client fails every request by its deadline, so this returns.
     */
    public long lsn() throws IOException {
        return MirrorlogClient.await(lsn);
    }

    private long lsnUnchecked() {
        try {
            return lsn();
        } catch (IOException e) {
            throw new IllegalStateException("location of a failed mirrorlog append: " + e.getMessage(), e);
        }
    }

    @Override
    public int compareTo(Object o) {
        return Long.compare(lsnUnchecked(), ((MirrorlogLocation) o).lsnUnchecked());
    }

    @Override
    public String toString() {
        Long v = lsn.isDone() && !lsn.isCompletedExceptionally() ? lsn.join() : null;
        return v == null ? "mirrorlog:lsn(pending)" : "mirrorlog:lsn=" + v;
    }
}
