import Foundation

/// Another process holding an SQLite database's write lock (Python's sqlite3 in an open `BEGIN IMMEDIATE`), as
/// another program on the host could, until `release()`.
public final class SQLiteWriteLock {
    private let process: Process
    private let input: Pipe

    /// Returns once the lock is held, awaited without holding a thread (the holder writes `log` then).
    public init(_ database: String, log: String) async throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1], isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            open(sys.argv[2], "w").write("locked")
            sys.stdin.read()
            """, database, log]
        input = Pipe()
        process.standardInput = input
        try process.run()
        guard await eventually(within: .seconds(20), {
            (try? String(contentsOfFile: log, encoding: .utf8))?.contains("locked") == true
        }) else { throw Failure("the lock holder did not take the lock of \(database)") }
    }

    /// Ends the holder (its input closed), and with it the transaction.
    public func release() async throws {
        try input.fileHandleForWriting.close()
        _ = await eventually(within: .seconds(10)) { !process.isRunning }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
