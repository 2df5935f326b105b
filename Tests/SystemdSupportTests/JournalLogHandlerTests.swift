import Logging
import SystemdSupport
import TestThreads
import Testing

@Suite(.ownThread) struct JournalLogHandlerTests {
    @Test func entriesCarryPriorityCodeLocationMetadataAndMessageIDs() {
        var handler = JournalLogHandler(identifier: "bunq-sessiond")
        handler[metadataKey: "bunq.daemon"] = "main"
        let fields = handler.fields(level: .error, message: "needs attention: bunq rejected the credentials",
                                    metadata: ["bunq.context": "ops", "bunq.error": "User credentials are incorrect."],
                                    file: "Keeper.swift", function: "logEvents()", line: 42)
        #expect(fields.contains("MESSAGE=needs attention: bunq rejected the credentials"))
        #expect(fields.contains("PRIORITY=3"))
        #expect(fields.contains("SYSLOG_IDENTIFIER=bunq-sessiond"))
        #expect(fields.contains("CODE_FILE=Keeper.swift") && fields.contains("CODE_LINE=42")
                    && fields.contains("CODE_FUNC=logEvents()"))
        #expect(fields.contains("BUNQ_CONTEXT=ops") && fields.contains("BUNQ_DAEMON=main"))
        #expect(fields.contains("MESSAGE_ID=e94c7b2a5d1f4c8e9b3a6d0f2e7c5a13"))
        #expect(!handler.fields(level: .info, message: "something else", metadata: nil, file: "f", function: "g", line: 1)
            .contains { $0.hasPrefix("MESSAGE_ID=") })
    }

    @Test func fieldNamesAndPrioritiesFollowJournalRules() {
        #expect(JournalLogHandler.fieldName("bunq.context") == "BUNQ_CONTEXT")
        #expect(JournalLogHandler.fieldName("bunq.peer-uid") == "BUNQ_PEER_UID")
        #expect(JournalLogHandler.fieldName("_trusted") == "TRUSTED", "leading underscores are for journald's own fields")
        #expect(Logger.Level.allCases.map(JournalLogHandler.priority) == [7, 7, 6, 5, 4, 3, 2])
        // Every alertable event has its own 128-bit id.
        let ids = Array(JournalLogHandler.messageIDs.values)
        #expect(Set(ids).count == ids.count && ids.allSatisfy { $0.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }
}
