import CCurl
import Foundation
import Synchronization

/// libcurl's process-wide initialisation, done once before the first handle is made. A global `let` is
/// initialised exactly once, thread-safely.
private let curlGlobalInit: CURLcode = curl_global_init(Int(CURL_GLOBAL_ALL))

/// A dedicated thread driving one curl multi handle: every transfer of an `HTTPClient` runs here, so no Swift
/// concurrency thread ever blocks on the network, and connections are pooled across requests.
///
/// `@unchecked Sendable`: `multi` and `active` are used only on the loop thread, except `curl_multi_wakeup`,
/// which libcurl allows from any thread and which is only called under `inbox`'s lock while `finished` is false
/// (the loop frees `multi` only after setting `finished` under that lock). `inbox` is the only shared state.
final class CurlMultiLoop: @unchecked Sendable {
    private struct Inbox {
        var added: [CurlTransfer] = []
        var cancelled: [CurlTransfer] = []
        var stopping = false
        var finished = false
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let multi: UnsafeMutableRawPointer
    private var active: [UnsafeMutableRawPointer: CurlTransfer] = [:]
    private let inbox = Mutex(Inbox())

    init(configuration: HTTPClient.Configuration) throws {
        guard curlGlobalInit == CURLE_OK, let multi = curl_multi_init() else {
            throw HTTPClientError(.internalError, "libcurl could not initialise", endpoint: "-")
        }
        self.multi = multi
        _ = bsc_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, configuration.maxPooledConnections)
        _ = bsc_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, configuration.maxConnectionsPerHost)
        let thread = Thread { [self] in run() }
        thread.name = "bunq-curl"
        thread.start()
    }

    /// Hands a configured transfer to the loop; fails it at once when the loop is shutting down.
    func submit(_ transfer: CurlTransfer) {
        let accepted = inbox.withLock { inbox in
            guard !inbox.stopping else { return false }
            inbox.added.append(transfer)
            curl_multi_wakeup(multi)
            return true
        }
        if !accepted {
            transfer.finish(.failure(HTTPClientError(.shutdown, "the HTTP client is shut down", endpoint: transfer.endpoint)))
        }
    }

    /// Asks the loop to abort `transfer`; harmless when it already finished.
    func cancel(_ transfer: CurlTransfer) {
        transfer.cancelRequested.store(true, ordering: .releasing)
        inbox.withLock { inbox in
            guard !inbox.finished else { return }
            inbox.cancelled.append(transfer)
            curl_multi_wakeup(multi)
        }
    }

    /// Fails every unfinished transfer with `shutdown` and ends the thread; returns once it has ended.
    func shutdown() async {
        await withCheckedContinuation { continuation in
            let done = inbox.withLock { inbox in
                if inbox.finished { return true }
                inbox.finishWaiters.append(continuation)
                if !inbox.stopping {
                    inbox.stopping = true
                    curl_multi_wakeup(multi)
                }
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Starts shutting down without waiting (for `deinit`).
    func stop() {
        inbox.withLock { inbox in
            guard !inbox.stopping else { return }
            inbox.stopping = true
            curl_multi_wakeup(multi)
        }
    }

    private func run() {
        while true {
            let (added, cancelled, stopping) = inbox.withLock { inbox in
                defer { inbox.added.removeAll(); inbox.cancelled.removeAll() }
                return (inbox.added, inbox.cancelled, inbox.stopping)
            }
            for transfer in added { start(transfer) }
            for transfer in cancelled {
                guard let easy = transfer.easy, active[easy] === transfer else { continue }
                end(transfer, .failure(CancellationError()))
            }
            if stopping {
                for transfer in active.values {
                    end(transfer, .failure(HTTPClientError(.shutdown, "the HTTP client shut down before a response",
                                                           endpoint: transfer.endpoint)))
                }
                break
            }
            var running: Int32 = 0
            _ = curl_multi_perform(multi, &running)
            collectFinished()
            // Sleeps until a socket is ready, libcurl's next timer, a wakeup, or at most a second.
            _ = curl_multi_poll(multi, nil, 0, 1000, nil)
        }
        let waiters = inbox.withLock { inbox in
            inbox.finished = true
            defer { inbox.finishWaiters.removeAll() }
            return inbox.finishWaiters
        }
        curl_multi_cleanup(multi)
        for waiter in waiters { waiter.resume() }
    }

    private func start(_ transfer: CurlTransfer) {
        if transfer.cancelRequested.load(ordering: .acquiring) {
            transfer.finish(.failure(CancellationError()))
            return
        }
        guard let easy = transfer.easy, curl_multi_add_handle(multi, easy) == CURLM_OK else {
            transfer.finish(.failure(HTTPClientError(.internalError, "libcurl could not start the transfer",
                                                     endpoint: transfer.endpoint)))
            return
        }
        active[easy] = transfer
    }

    private func end(_ transfer: CurlTransfer, _ result: Result<HTTPResponse, any Error>) {
        if let easy = transfer.easy {
            curl_multi_remove_handle(multi, easy)
            active[easy] = nil
        }
        transfer.finish(result)
    }

    private func collectFinished() {
        var queued: Int32 = 0
        while let message = curl_multi_info_read(multi, &queued) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                  let transfer = active[easy] else { continue }
            let code = message.pointee.data.result
            curl_multi_remove_handle(multi, easy)
            active[easy] = nil
            transfer.finish(transfer.outcome(code))
        }
    }
}
