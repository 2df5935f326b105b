import Synchronization

/// A flag one task sets and another reads (whether something happened yet).
public final class Flag: Sendable {
    private let value = Atomic<Bool>(false)

    public init() {}
    public func set() { value.store(true, ordering: .sequentiallyConsistent) }
    public var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}
