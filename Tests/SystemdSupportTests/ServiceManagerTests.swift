import Foundation
import SystemdSupport
import TestThreads
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .ownThread) struct ServiceManagerTests {
    /// A datagram socket standing in for systemd's notification socket.
    @Test func notifyDeliversTheStateToNotifySocket() throws {
        let notifications = try NotifySocket()
        let path = notifications.path

        // No other test reads NOTIFY_SOCKET; it is restored before returning.
        let previous = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        setenv("NOTIFY_SOCKET", path, 1)
        defer {
            if let previous { setenv("NOTIFY_SOCKET", previous, 1) } else { unsetenv("NOTIFY_SOCKET") }
        }
        func next() -> String { notifications.next() ?? "" }
        #expect(ServiceManager.notify("READY=1\nSTATUS=3 live, 0 failing"))
        #expect(next() == "READY=1\nSTATUS=3 live, 0 failing")
        #expect(ServiceManager.ready(status: "2 live, 0 failing; next renewal ops in 41 min"))
        #expect(next() == "READY=1\nSTATUS=2 live, 0 failing; next renewal ops in 41 min")
        #expect(ServiceManager.status("1 live, 1 failing"))
        #expect(next() == "STATUS=1 live, 1 failing")
        #expect(ServiceManager.watchdog())
        #expect(next() == "WATCHDOG=1")
        #expect(ServiceManager.stopping())
        #expect(next() == "STOPPING=1")
        #expect(ServiceManager.reloading())
        let reloading = next()
        #expect(reloading.hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        #expect(UInt64(reloading.split(separator: "=").last ?? "") ?? 0 > 0)
        #expect(ServiceManager.extendStartup(by: .seconds(30), status: "registering provider with bunq"))
        #expect(next() == "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=registering provider with bunq")
        #expect(ServiceManager.failed(errno: 22, status: "configuration error"))
        #expect(next() == "STATUS=configuration error\nERRNO=22")
    }

    @Test func theWatchdogIntervalHonoursWatchdogPid() {
        setenv("WATCHDOG_USEC", "4000000", 1)
        setenv("WATCHDOG_PID", String(getpid()), 1)
        #expect(ServiceManager.watchdogInterval == .seconds(4))
        setenv("WATCHDOG_PID", String(getpid() + 1), 1)
        #expect(ServiceManager.watchdogInterval == nil, "pings are for another process")
        unsetenv("WATCHDOG_PID")
        unsetenv("WATCHDOG_USEC")
        #expect(ServiceManager.watchdogInterval == nil)
    }

    @Test func notifyOutsideSystemdIsANoOp() {
        guard getenv("NOTIFY_SOCKET") == nil else {
            #expect(!Skip.report("notifyOutsideSystemdIsANoOp: running under a service manager (NOTIFY_SOCKET is set)"))
            return
        }
        #expect(ServiceManager.notify("READY=1") == false)
    }
}
