"""Log lines and numbers into events: the rule engine, hang and straggler signals, where a failure's fault lies. Pure; imports only domain."""
