//! A minimal HTTP/1.1 client over std TcpStream for the HTTP and console tests.
