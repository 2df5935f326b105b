import Logging
import SessionKeeper
import Synchronization
import TestThreads
import Testing
import TestSupport
import Timekeeping

/// Every store call's deadline and the store's health, in virtual time: a call that does not answer is given up
/// at its deadline (told to stop through `onTimeout`), the health turns unreachable once and back once, and an
/// answer that refuses (a row gone) is the store working.
@Suite(.ownThread) struct StoreCallsTests {
    let clock = ManualClock()

    func calls() -> StoreCalls {
        StoreCalls(location: "test-store", timeout: .seconds(2), clock: clock.erased, logger: Logger(label: "test"))
    }

    /// A call that never answers on its own (it ends only when cancelled).
    /// How often a call past its deadline told the engine to let go.
    final class Told: Sendable {
        let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
    }

    func hanging(_ calls: StoreCalls, _ operation: String, told: Told) async -> (any Error)? {
        async let outcome: (any Error)? = {
            do {
                _ = try await calls.run(operation, { try await clock.sleep(for: .seconds(86_400)) },
                                        onTimeout: { told.count.withLock { $0 += 1 } })
                return nil
            } catch {
                return error
            }
        }()
        // The call's own sleep and its deadline's.
        let before = told.value
        // Never advanced before both sleep (a sleep begun after the advance would wait for ever): a failure,
        // and the call is cancelled as this returns.
        guard await eventually(within: .seconds(30), every: .milliseconds(1), { clock.sleeping == 2 }) else {
            Issue.record("the call and its deadline never slept: \(clock.sleeping)")
            return nil
        }
        clock.advance(by: .seconds(1))
        #expect(told.value == before, "not before its deadline")
        clock.advance(by: .seconds(1))
        return await outcome
    }

    @Test func aCallThatDoesNotAnswerIsGivenUpAtItsDeadline() async throws {
        let calls = calls()
        let told = Told()
        let error = await hanging(calls, "save_session", told: told)
        #expect((error as? StoreError)?.code == .timeout && "\(error!)".contains("test-store"), "\(String(describing: error))")
        #expect(told.value == 1, "the engine was told to let go")
        var health = calls.health
        #expect(!health.reachable && health.failingSince != nil && health.consecutiveFailures == 1)
        _ = await hanging(calls, "save_session", told: told)
        health = calls.health
        #expect(!health.reachable && health.consecutiveFailures == 2)
        // An answer, even a refusal, is the store working again.
        await #expect { try await calls.run("save_session") { throw StoreError(.missing, "context gone") } }
            throws: { ($0 as? StoreError)?.code == .missing }
        health = calls.health
        #expect(health.reachable && health.failingSince == nil && health.consecutiveFailures == 0)
    }

    @Test func readsAnsweringDoNotHideFailingWrites() async throws {
        let calls = calls()
        let told = Told()
        _ = await hanging(calls, "save_session", told: told)
        // An SQLite file locked by another writer still answers reads: still unreachable for writes.
        #expect(try await calls.run("read_context") { 7 } == 7)
        #expect(!calls.health.reachable)
        #expect(try await calls.run("save_session") { 8 } == 8)
        #expect(calls.health.reachable)
    }

    @Test func otherFailuresAreDatabaseErrorsNamingTheStore() async throws {
        struct Broken: Error {}
        let calls = calls()
        await #expect { try await calls.run("read_records") { throw Broken() } } throws: { error in
            (error as? StoreError)?.code == .database && "\(error)".contains("test-store")
        }
        #expect(!calls.health.reachable)
    }
}
