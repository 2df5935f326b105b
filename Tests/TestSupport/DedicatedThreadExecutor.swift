import Foundation

/// A task executor with a thread of its own, for test code whose progress must not depend on Swift's shared
/// cooperative pool (two threads here, which another test's blocking call — a child process, a socket read —
/// can hold for seconds). Default actors called from a task preferring it run on its thread too.
///
/// `shutDown()` ends the thread once the jobs queued before it have run; a job that arrives later (a
/// continuation resumed after its test ended) goes to the global executor instead, so nothing is ever dropped.
public final class DedicatedThreadExecutor: TaskExecutor, @unchecked Sendable {
    // Invariant: `jobs` and `open` are only touched with `condition` locked.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var open = true

    public init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        guard open else {
            condition.unlock()
            globalConcurrentExecutor.enqueue(job)
            return
        }
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread end after the jobs already queued.
    public func shutDown() {
        condition.lock()
        open = false
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && open { condition.wait() }
            guard !jobs.isEmpty else {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
