import Foundation
import TestThreads
import Testing
import TestSupport

/// The `bunq-sandbox` binary itself: its first stdout line and its flag checks.
@Suite(.ownThread) struct ExecutableTests {
    static var binary: String {
        // .../<repo>/Tests/BunqSandboxTests/ExecutableTests.swift → <repo>/.build/debug/bunq-sandbox
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/debug/bunq-sandbox").path
    }

    @Test func firstStdoutLineNamesTheListeningAddress() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build it first: make build")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        // Limits off: this test is about the executable's flags and first line, not the limits (LimitsAndFaultsTests).
        process.arguments = ["--port", "0", "--session-timeout", "5", "--rate-limits", "off"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        let match = text.wholeMatch(of: /listening on http:\/\/127\.0\.0\.1:(\d+)/)
        let port = try #require(match.flatMap { Int($0.1) }, "got: \(text)")
        #expect(port > 0)
    }

    @Test func badFlagsAreUsageErrorsNamingTheFlag() throws {
        for (arguments, flag) in [(["--rate-limits", "sometimes"], "--rate-limits"),
                                  (["--expired-session-status", "500"], "--expired-session-status"),
                                  (["--session-extension-seconds", "0"], "--session-extension-seconds"),
                                  (["--api-key-bind-window=-1"], "--api-key-bind-window"),
                                  (["--session-timeout", "0"], "--session-timeout"),
                                  (["--port", "70000"], "--port"),
                                  (["--no-such-flag"], "--no-such-flag")] {
            let result = try Command.run([Self.binary] + arguments)
            #expect(result.status == 64, "\(arguments)")
            #expect(result.stderrText.contains(flag), "\(arguments): \(result.stderrText)")
        }
    }
}
