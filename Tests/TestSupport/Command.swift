import Foundation

/// Runs external commands (openssl, ...) from tests and reports their exit status and output.
public enum Command {
    public struct Output: Sendable {
        public let status: Int32
        public let stdout: Data
        public let stderr: Data
        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
        public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let arguments: [String]
        public let output: Output
        public var description: String {
            "`\(arguments.joined(separator: " "))` exited \(output.status): \(output.stderrText)"
        }
    }

    /// Runs `arguments` (the first resolved through PATH) to completion, feeding `stdin`.
    @discardableResult
    public static func run(_ arguments: [String], stdin: Data = Data(), in directory: URL? = nil) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        // Drain both pipes concurrently so a chatty child never blocks on a full pipe.
        let collected = ConcurrentRead(errors.fileHandleForReading)
        input.fileHandleForWriting.write(stdin)
        try input.fileHandleForWriting.close()
        let stdout = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Output(status: process.terminationStatus, stdout: stdout, stderr: collected.wait())
    }

    /// Like `run`, but throws unless the command exits 0.
    @discardableResult
    public static func check(_ arguments: [String], stdin: Data = Data(), in directory: URL? = nil) throws -> Output {
        let output = try run(arguments, stdin: stdin, in: directory)
        guard output.status == 0 else { throw Failure(arguments: arguments, output: output) }
        return output
    }
}

/// Reads a file handle to its end on a background thread.
private final class ConcurrentRead: @unchecked Sendable {
    // Invariant: `data` is written once by the reader thread before `done` is signalled, read only after.
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    func wait() -> Data {
        done.wait()
        return data
    }
}

/// A fresh directory under the system temporary directory, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    public let url: URL

    public init(_ prefix: String = "bunq-sessiond-test") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    public func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    public func write(_ name: String, _ text: String) throws -> String {
        let path = path(name)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    public func read(_ name: String) throws -> String {
        try String(contentsOfFile: path(name), encoding: .utf8)
    }

    public func remove() {
        try? FileManager.default.removeItem(at: url)
    }
}

/// The repository's test fixtures (`Tests/Fixtures`): public known-answer vectors, read from the checkout itself so
/// a fresh clone's `make test` needs nothing beside it.
public enum SharedTestData {
    /// The directory holding the known-answer vectors.
    public static var directory: URL {
        // #filePath is .../<repo>/Tests/TestSupport/Command.swift.
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
    }

    /// The text of a file under the test data directory, exactly as stored.
    public static func text(_ relativePath: String) throws -> String {
        let url = directory.appendingPathComponent(relativePath)
        do {
            return try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw MissingTestData(path: url.path)
        }
    }

    public struct MissingTestData: Error, CustomStringConvertible {
        public let path: String
        public var description: String {
            "test vector \(path) not found in Tests/Fixtures"
        }
    }
}
