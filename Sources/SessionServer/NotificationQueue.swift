import Synchronization

/// A subscriber's unsent notifications, coalesced: at most one per context and kind (the newest
/// `session.rotated` carries the current token, the newest `context.state` the current state), so a subscriber
/// that reads slowly or not at all costs a bounded amount of memory however many rotations happen, and loses
/// nothing a newer notification does not replace. A replaced notification moves to the end: the order delivered
/// is the order of the newest events. One consumer (the connection's delivery task).
final class NotificationQueue: Sendable {
    enum Kind: Sendable { case rotated, state }
    struct Key: Hashable, Sendable {
        let context: String
        let kind: Kind
    }

    private struct State {
        var order: [Key] = []
        var lines: [Key: [UInt8]] = [:]
        var waiter: CheckedContinuation<[UInt8]?, Never>?
        var finished = false

        mutating func remove(_ key: Key) {
            guard lines.removeValue(forKey: key) != nil else { return }
            order.removeAll { $0 == key }
        }
    }

    private let state = Mutex(State())

    /// Queues `line`, replacing an unsent one of the same context and kind. A final state (`forbidden`: revoked
    /// or removed) also drops that context's unsent token.
    func put(_ line: [UInt8], context: String, kind: Kind, final: Bool = false) {
        let key = Key(context: context, kind: kind)
        let waiter = state.withLock { state -> CheckedContinuation<[UInt8]?, Never>? in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if final { state.remove(Key(context: context, kind: .rotated)) }
            state.remove(key)
            state.order.append(key)
            state.lines[key] = line
            return nil
        }
        waiter?.resume(returning: line)
    }

    /// The next notification, or nil once the queue is finished (or the waiting task cancelled).
    func next() async -> [UInt8]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[UInt8]?, Never>) in
                let ready = state.withLock { state -> [UInt8]?? in
                    if !state.order.isEmpty {
                        let key = state.order.removeFirst()
                        return .some(state.lines.removeValue(forKey: key))
                    }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            finish()
        }
    }

    /// Unsent notifications (for tests and status).
    var count: Int { state.withLock { $0.order.count } }

    /// No more notifications: a waiting consumer gets nil, unsent ones are dropped.
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<[UInt8]?, Never>? in
            state.finished = true
            state.order.removeAll()
            state.lines.removeAll()
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }
}
