<%@ page contentType="text/plain; charset=UTF-8" %><%
    // Counts visits in the in-memory HttpSession: a request on the wrong node (or after the
    // node restarted) starts again at 1.
    Integer n = (Integer) session.getAttribute("visits");
    n = (n == null) ? 1 : n + 1;
    session.setAttribute("visits", n);
%>visits=<%= n %> session=<%= session.getId() %> rewrite=<%= response.encodeURL("/index.jsp") %>
