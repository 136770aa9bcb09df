<%@ page contentType="text/plain" session="false" %>ok
