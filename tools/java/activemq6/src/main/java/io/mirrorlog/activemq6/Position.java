package io.mirrorlog.activemq6;

import java.util.Arrays;

/**
 * Where a store cursor stands: the last sequence handed to it, one per
 * priority when messages are prioritized (a higher priority message that
 * arrives later is still handed out before lower ones), else one.
 */
final class Position {
    final long[] last = new long[10];

    Position() {
        reset();
    }

    void reset() {
        Arrays.fill(last, -1);
    }

    static int slot(Entry e) {
        return Math.max(0, Math.min(9, e.priority));
    }

    /** The lowest sequence any slot stands at (where a scan begins). */
    long lowest(boolean prioritized) {
        if (!prioritized) {
            return last[0];
        }
        long low = Long.MAX_VALUE;
        for (long l : last) {
            low = Math.min(low, l);
        }
        return low;
    }

    boolean after(Entry e, boolean prioritized) {
        return e.seq > last[prioritized ? slot(e) : 0];
    }

    void delivered(Entry e, boolean prioritized) {
        int s = prioritized ? slot(e) : 0;
        last[s] = Math.max(last[s], e.seq);
    }

    /**
     * Positions exactly after {@code e}: in priority order everything of a
     * higher priority that came before it (a lower sequence) was handed out
     * before it.
     */
    void setAt(Entry e, boolean prioritized) {
        setAt(e.seq, prioritized ? slot(e) : 0, prioritized);
    }

    void setAt(long seq, int slot, boolean prioritized) {
        last[slot] = seq;
        if (prioritized) {
            for (int p = slot + 1; p < 10; p++) {
                last[p] = Math.max(last[p], seq);
            }
        }
    }
}
