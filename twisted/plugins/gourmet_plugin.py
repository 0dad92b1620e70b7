from twisted.application.service import ServiceMaker

gourmet = ServiceMaker(
    "Gourmet",
    "gourmet.tap",
    "An HTTP load balancer and reverse proxy with a live admin console.",
    "gourmet",
)
