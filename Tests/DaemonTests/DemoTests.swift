import Foundation
import TestThreads
import Testing
import TestSupport

/// `make run`'s script, in the bounded form CI can run: everything comes up, an OAuth user connects, money
/// moves through the proxy and its callback arrives signed, and everything stops.
@Suite(.ownThread) struct DemoTests {
    @Test func theDemoConnectsAUserAndStopsCleanly() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let script = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/demo.sh").path
        // Bounded: a demo that cannot stop (a child it cannot kill) fails here instead of holding the suite.
        let output = try Command.run(["timeout", "-k", "10", "300", "env", "DEMO_SECONDS=4", "SESSION_TIMEOUT=30",
                                      "DEMO_DIR=\(dir.path("demo"))", "bash", script])
        let text = output.stdoutText
        #expect(output.status == 0, "\(output.stderrText)")
        #expect(text.contains("connected: user-"), "\(text)")
        #expect(text.contains("contexts: 4 (4 live"), "\(text)")
        #expect(text.contains("ops paid bob 12.50 EUR: ops now has 987.50 EUR, bob 1012.50 EUR"), "\(text)")
        #expect(text.contains(#"callback received: PAYMENT PAYMENT_RECEIVED, 12.50 EUR "demo: lunch", its signature verifies"#),
                "\(text)")
        #expect(text.contains("session-server budget: "), "the status shows the budget: \(text)")
        #expect(text.contains("stopped."))
        // Nothing is left running from the demo's folder.
        let leftovers = try Command.run(["pgrep", "-f", dir.path("demo")])
        #expect(leftovers.stdoutText.isEmpty, "processes left behind: \(leftovers.stdoutText)")
    }
}
