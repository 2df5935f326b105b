import CurlHTTP
import Foundation
import Synchronization

/// A callback the emulator owes a target, made when its event happened: the exact body bytes and bunq's
/// `X-Bunq-Server-Signature` over them.
struct CallbackJob: Sendable {
    let target: String
    let category: String
    let eventType: String
    let body: [UInt8]
    let signature: String
}

/// Delivers callbacks as bunq does: POSTed at once; a target that does not answer 200 is tried `retries` more
/// times, `retryInterval` apart (bunq: a minute; `--callback-retry-seconds`). Each target gets its callbacks in
/// the order their events happened, one at a time (a created draft before its acceptance), while different
/// targets are served side by side, so a slow target holds up no other. What happened to each is kept for
/// `GET /_sandbox/callbacks` (the latest `logCapacity`).
final class CallbackDelivery: Sendable {
    /// One delivery as `GET /_sandbox/callbacks` shows it.
    struct Record: Sendable {
        let id: Int
        let target: String
        let category: String
        let eventType: String
        var attempts = 0
        var delivered = false
        /// The target's last status, or why it could not be reached.
        var lastResult = "pending"

        var json: BunqJSON {
            .object([("id", .int(id)), ("target_url", .string(target)), ("category", .string(category)),
                     ("event_type", .string(eventType)), ("attempts", .int(attempts)), ("delivered", .bool(delivered)),
                     ("last_result", .string(lastResult))])
        }
    }

    static let retries = 5
    static let logCapacity = 1_000
    let retryInterval: Duration
    private let jobs: AsyncStream<(Int, CallbackJob)>
    private let continuation: AsyncStream<(Int, CallbackJob)>.Continuation
    private let records = Mutex((nextId: 1, list: [Record]()))
    /// The callbacks waiting behind the one being delivered, per target; a target with an entry has a lane running.
    private let lanes = Mutex([String: [(Int, CallbackJob)]]())

    init(retryInterval: Duration) {
        self.retryInterval = retryInterval
        let (stream, continuation) = AsyncStream.makeStream(of: (Int, CallbackJob).self)
        jobs = stream
        self.continuation = continuation
    }

    /// Queues `new` for delivery (from any thread; never waits).
    func enqueue(_ new: [CallbackJob]) {
        for job in new {
            let id = records.withLock { state in
                let id = state.nextId
                state.nextId += 1
                state.list.append(Record(id: id, target: job.target, category: job.category, eventType: job.eventType))
                if state.list.count > Self.logCapacity { state.list.removeFirst(state.list.count - Self.logCapacity) }
                return id
            }
            continuation.yield((id, job))
        }
    }

    /// The deliveries so far, oldest first.
    var log: [Record] { records.withLock { $0.list } }

    /// Delivers until the calling task is cancelled.
    func run() async {
        guard let http = try? HTTPClient(configuration: .init(connectTimeout: .seconds(5), timeout: .seconds(10))) else {
            return
        }
        await withDiscardingTaskGroup { group in
            for await (id, job) in jobs {
                let opensLane = lanes.withLock { lanes -> Bool in
                    if lanes[job.target] != nil {
                        lanes[job.target, default: []].append((id, job))
                        return false
                    }
                    lanes[job.target] = []
                    return true
                }
                guard opensLane else { continue }
                group.addTask {
                    var next: (Int, CallbackJob)? = (id, job)
                    while let (id, job) = next {
                        await self.deliver(job, id: id, http: http)
                        next = self.lanes.withLock { lanes in
                            guard let waiting = lanes[job.target], !waiting.isEmpty, !Task.isCancelled else {
                                lanes[job.target] = nil
                                return nil
                            }
                            lanes[job.target] = Array(waiting.dropFirst())
                            return waiting[0]
                        }
                    }
                }
            }
        }
        await http.shutdown()
    }

    private func deliver(_ job: CallbackJob, id: Int, http: HTTPClient) async {
        let request = CurlHTTP.HTTPRequest(
            method: "POST", url: job.target,
            headers: CurlHTTP.HTTPHeaders([("Content-Type", "application/json"), ("User-Agent", "bunq-sandbox"),
                                           ("X-Bunq-Server-Signature", job.signature)]),
            body: Data(job.body))
        for attempt in 0...Self.retries {
            if attempt > 0 {
                do {
                    try await Task.sleep(for: retryInterval)
                } catch {
                    return
                }
            }
            let result: String
            do {
                result = "\(try await http.execute(request).status)"
            } catch {
                result = (error as? HTTPClientError).map { "unreachable: \($0.message)" } ?? "unreachable"
            }
            let delivered = result == "200"
            update(id) { record in
                record.attempts = attempt + 1
                record.lastResult = result
                record.delivered = delivered
            }
            if delivered || Task.isCancelled { return }
        }
    }

    private func update(_ id: Int, _ change: (inout Record) -> Void) {
        records.withLock { state in
            guard let index = state.list.lastIndex(where: { $0.id == id }) else { return }
            change(&state.list[index])
        }
    }
}
