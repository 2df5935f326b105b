import Foundation
import Synchronization
import Testing
import TestSupport

/// Every test case runs on a thread of its own instead of Swift's shared cooperative pool, and at most twelve
/// of them run at once (`TestSlots`: six short lanes, four long ones, and two for long chains).
///
/// Why the thread: the pool has one thread per core (two here), and tests block — a child process run to
/// completion, a socket read, a PostgreSQL started. Two such calls anywhere in the suite used to stop every
/// other test's tasks for seconds, so a store call with a 2-second deadline or a renewal with a 12-second window
/// failed for another test's sake. With a thread per test case, a test that blocks delays only itself.
///
/// Why the bound: with nothing shared left to hold them back, every test of the suite would start its daemons,
/// emulators and databases in the same second, and the real-clock tests among them would measure the machine's
/// overload instead of the product. The bound keeps the load what a 2-core machine carries.
///
/// A *long chain* — a suite both `.serialized` and `.long` — holds one lane of its own from its first test to
/// its last. Its tests run one after another anyway; taking a lane per test, each would queue again behind every
/// long test that asked meanwhile, and the chain (the longest is about two minutes) would end last, with the
/// machine half idle around it.
///
/// Applied to a suite (`@Suite(.ownThread)`) it reaches every test case in it.
public struct OwnThread: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    /// Set while a long chain holds its lane: its test cases take no other.
    @TaskLocal static var inChain = false

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> OwnThread? {
        // A running test case gets a thread; a long chain as a whole gets its lane. Any other suite, or a
        // parameterized test as a whole, runs nothing itself.
        testCase != nil || Self.isLongChain(test) ? self : nil
    }

    static func isLongChain(_ test: Test) -> Bool {
        test.isSuite && test.tags.contains(.long) && test.traits.contains { $0 is ParallelizationTrait }
    }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        if testCase == nil {
            await TestSlots.chains.acquire()
            defer { TestSlots.chains.release() }
            try await Self.$inChain.withValue(true) { try await function() }
            return
        }
        let slots = Self.inChain ? nil : test.tags.contains(.long) ? TestSlots.long : TestSlots.short
        await slots?.acquire()
        let executor = DedicatedThreadExecutor(name: "test \(test.name)")
        let started = ContinuousClock.now
        defer {
            executor.shutDown()
            slots?.release()
            TestTimings.record(test, ContinuousClock.now - started)
        }
        try await withTaskExecutorPreference(executor) { try await function() }
    }
}

extension Trait where Self == OwnThread {
    /// Runs each test case on a thread of its own; see `OwnThread`.
    public static var ownThread: OwnThread { OwnThread() }
}

extension Tag {
    /// A test that runs for tens of seconds (daemons on real clocks, PostgreSQL, a CPU-heavy simulation). Long
    /// tests have lanes of their own, so they start at once instead of behind a hundred short ones: the suite's
    /// time is then the longest test's, not a long test's that happened to start last.
    @Tag public static var long: Self
}

/// How many test cases run at once, first come, first served in each lane: short tests in
/// `BUNQ_TEST_PARALLELISM` lanes (six by default), long ones in `BUNQ_TEST_LONG_PARALLELISM` more (four), long
/// chains in `BUNQ_TEST_CHAIN_PARALLELISM` (two).
final class TestSlots: Sendable {
    static let short = TestSlots(width: Int(ProcessInfo.processInfo.environment["BUNQ_TEST_PARALLELISM"] ?? "") ?? 6)
    static let long = TestSlots(width: Int(ProcessInfo.processInfo.environment["BUNQ_TEST_LONG_PARALLELISM"] ?? "") ?? 4)
    static let chains = TestSlots(width: Int(ProcessInfo.processInfo.environment["BUNQ_TEST_CHAIN_PARALLELISM"] ?? "") ?? 2)

    private struct State {
        var free: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(width: Int) { state = Mutex(State(free: max(1, width))) }

    func acquire() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                guard state.free > 0 else {
                    state.waiting.append(waiter)
                    return false
                }
                state.free -= 1
                return true
            }
            if now { waiter.resume() }
        }
    }

    /// Hands the slot to the longest waiter, if any.
    func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiting.isEmpty else {
                state.free += 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}

/// With `BUNQ_TEST_TIMINGS=file`, each test case's own running time (from its slot to its end, without the wait
/// for a slot) is appended to `file` as `seconds<TAB>test id`: where the suite's time goes.
enum TestTimings {
    static let file = ProcessInfo.processInfo.environment["BUNQ_TEST_TIMINGS"]
    static let lock = Mutex(())

    static func record(_ test: Test, _ duration: Duration) {
        guard let file, !file.isEmpty else { return }
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let line = "\(String(format: "%.3f", seconds))\t\(test.id)\n"
        lock.withLock { _ in
            guard let handle = FileHandle(forWritingAtPath: file) ?? {
                _ = FileManager.default.createFile(atPath: file, contents: nil)
                return FileHandle(forWritingAtPath: file)
            }() else { return }
            handle.seekToEndOfFile()
            handle.write(Data(line.utf8))
            try? handle.close()
        }
    }
}
