package io.mirrorlog.client;

import java.io.IOException;

/** An error answered by mirrorlogd (or raised by the client), with its documented code. */
public class MirrorlogException extends IOException {
    private static final long serialVersionUID = 1L;
    private final int code;
    private final String detail;

    public MirrorlogException(int code, String message) {
        super("mirrorlog error " + code + ": " + message);
        this.code = code;
        this.detail = message;
    }

    /** The server's message, without the code. */
    public String detail() {
        return detail;
    }

    /** The numbered code of docs/protocol.md (208 timeout, 209 unavailable are client side). */
    public int code() {
        return code;
    }
}
