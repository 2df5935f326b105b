import Foundation

/// A task executor with a thread of its own, for a timing test whose progress must not depend on Swift's shared
/// cooperative pool (two threads here, which other tests' blocking calls can hold for seconds). Default actors
/// called from a task preferring it run on its thread too. Its thread lives as long as the test process.
public final class DedicatedThreadExecutor: TaskExecutor, @unchecked Sendable {
    // Invariant: `jobs` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    public init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
