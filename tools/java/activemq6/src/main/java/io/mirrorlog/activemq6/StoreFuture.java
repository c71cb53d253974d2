package io.mirrorlog.activemq6;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.activemq.store.ListenableFuture;

/**
 * The future of an async add: completes (with null) once the record is
 * durable at the adapter's durability, or fails with the append's error;
 * cancelled if the message was acknowledged before its add was sent (the
 * add was withdrawn and never written, as KahaDB cancels its store task).
 */
final class StoreFuture implements ListenableFuture<Object> {
    final CompletableFuture<Object> f = new CompletableFuture<>();

    @Override
    public void addListener(Runnable listener) {
        f.whenComplete((v, e) -> listener.run());
    }

    @Override
    public boolean cancel(boolean mayInterruptIfRunning) {
        return false; // a record handed to the appliance cannot be taken back
    }

    @Override
    public boolean isCancelled() {
        return f.isCancelled(); // withdrawn: acknowledged before it was written
    }

    @Override
    public boolean isDone() {
        return f.isDone();
    }

    @Override
    public Object get() throws InterruptedException, ExecutionException {
        return f.get();
    }

    @Override
    public Object get(long timeout, TimeUnit unit) throws InterruptedException, ExecutionException, TimeoutException {
        return f.get(timeout, unit);
    }
}
