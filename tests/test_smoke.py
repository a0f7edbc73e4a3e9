import rcf_sync


def test_public_names_report_the_package_module():
    """Public classes say rcf_sync.X in reprs and tracebacks."""
    assert rcf_sync.ReconnectingClientFactory.__module__ == "rcf_sync"
    assert rcf_sync.ConnectionLost.__module__ == "rcf_sync"
