import TestThreads
import Testing
@testable import SessionServer

/// A subscriber's queue keeps the newest notification per context and kind, in the order of the newest events,
/// and a final state drops that context's unsent token.
@Suite(.ownThread) struct NotificationQueueTests {
    private func text(_ line: [UInt8]?) -> String? { line.map { String(decoding: $0, as: UTF8.self) } }

    @Test func coalescesToTheNewestPerContextAndKind() async {
        let queue = NotificationQueue()
        for generation in 1...2_000 {
            queue.put(Array("ops rotated \(generation)".utf8), context: "ops", kind: .rotated)
            if generation == 1_000 { queue.put(Array("ops retrying".utf8), context: "ops", kind: .state) }
        }
        queue.put(Array("provider rotated 7".utf8), context: "provider", kind: .rotated)
        #expect(queue.count == 3)
        #expect(text(await queue.next()) == "ops retrying")
        #expect(text(await queue.next()) == "ops rotated 2000", "the newest token, moved after the state it followed")
        #expect(text(await queue.next()) == "provider rotated 7")
        #expect(queue.count == 0)
    }

    @Test func aFinalStateDropsTheUnsentTokenAndFinishEndsTheConsumer() async {
        let queue = NotificationQueue()
        queue.put(Array("ops rotated 3".utf8), context: "ops", kind: .rotated)
        queue.put(Array("provider rotated 4".utf8), context: "provider", kind: .rotated)
        queue.put(Array("ops forbidden".utf8), context: "ops", kind: .state, final: true)
        #expect(text(await queue.next()) == "provider rotated 4")
        #expect(text(await queue.next()) == "ops forbidden", "no token of a revoked context is sent")
        async let waiting = queue.next()
        queue.finish()
        #expect(await waiting == nil)
        queue.put(Array("late".utf8), context: "ops", kind: .rotated)
        #expect(await queue.next() == nil, "nothing after the end")
    }
}
